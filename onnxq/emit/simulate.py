"""The quantized network as the runtime will compute it, for passes that measure it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.emit.qdq import EmitQDQPass
from onnxq.numerics.affine import QTYPES, dequantize
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan

FLOAT_GRIDS = frozenset(q.dtype for q in QTYPES.values() if q.levels is not None)
"""Weight types ONNX Runtime has no DequantizeLinear kernel for (fp4)."""


def _float_grid_constant(node: ir.Node) -> bool:
    weight = node.inputs[0]
    return (node.op_type == "DequantizeLinear" and weight is not None
            and weight.const_value is not None and weight.const_value.dtype in FLOAT_GRIDS)


def holds_float_grids(model: ir.Model) -> bool:
    """Whether ``model`` dequantizes fp4 weights (which ONNX Runtime cannot run)."""
    return any(_float_grid_constant(node) for node in ir.traversal.RecursiveGraphIterator(
        model.graph))


def float_grid_weights(model: ir.Model) -> int:
    """Replace, in place, each DequantizeLinear of an fp4 constant by the float weight it
    computes (what OpenVINO does with a Conv's fp4 weights at compile time), so that ONNX
    Runtime runs the quantized network; return how many were replaced."""
    nodes = [n for n in ir.traversal.RecursiveGraphIterator(model.graph)
             if _float_grid_constant(n)]
    for node in nodes:
        weight, scale = node.inputs[0].const_value, node.inputs[1].const_value.numpy()
        axis = node.attributes.get_int("axis", 1) if scale.size > 1 else None
        block = node.attributes.get_int("block_size", 0) or None
        values = weight.numpy().astype(np.float32)
        axis = None if axis is None else axis % values.ndim
        floats = dequantize(values, scale, np.zeros(scale.shape, np.int64), axis, block)
        name = node.outputs[0].name
        node.outputs[0].name = f"{name}_replaced"
        constant = ir.Value(name=name, const_value=ir.tensor(floats, name=name))
        model.graph.register_initializer(constant)
        node.outputs[0].replace_all_uses_with(constant)
        node.graph.remove(node, safe=True)
    return len(nodes)


def quantized_copy(model: ir.Model, plan: QuantPlan, activation_qparams: dict[str, QParams],
                   weight_qparams: dict[str, QParams]) -> ir.Model:
    """A copy of ``model`` with the Q/DQ nodes emission would write now for ``plan`` (fp4
    weights as the float values they dequantize to); ``model`` is untouched."""
    copy = model.clone()
    EmitQDQPass(plan.bind(copy), activation_qparams, weight_qparams)(copy)
    float_grid_weights(copy)
    return copy
