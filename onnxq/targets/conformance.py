"""Structural conformance of a QDQ model to a target profile: what a runtime would reject or
run slowly, found by reading the graph (no runtime needed)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.graph import fused_chain_end
from onnxq.plan.fragile import fused_chains
from onnxq.prepare.static_shapes import dynamic_inputs
from onnxq.targets.profile import TargetProfile

SIGNED = (ir.DataType.INT8, ir.DataType.INT4, ir.DataType.INT16)
"""Weight types whose zero point every target wants at 0."""


def _dequantized_constant(value: ir.Value | None) -> ir.Node | None:
    """The DequantizeLinear of a constant (weight or bias) that produces ``value``."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear":
        return None
    return node if node.inputs[0].const_value is not None else None


def _zero_point(node: ir.Node) -> np.ndarray | None:
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    return zp.const_value.numpy() if zp is not None and zp.const_value is not None else None


def problems(model: ir.Model, target: TargetProfile) -> list[str]:
    """What in ``model`` breaks ``target``'s rules, one line each (empty: it conforms)."""
    found: list[str] = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "QuantizeLinear":
            kind = node.outputs[0].dtype.name.lower()
            zp = _zero_point(node)
            if kind not in target.activations:
                found.append(f"{node.name}: {kind} activations, which {target.name} does not run")
            elif kind.startswith("int") and zp is not None and np.any(zp != 0):
                found.append(f"{node.name}: signed activations with a zero point other than 0")
        if node.op_type != "DequantizeLinear" or node.inputs[0].const_value is None:
            continue
        stored = node.inputs[0].const_value.dtype
        readers = [user for user, _ in node.outputs[0].uses()]
        zp = _zero_point(node)
        if stored == ir.DataType.INT32 and not target.quantize_bias:
            found.append(f"{node.name}: an int32 bias, which {target.name} keeps float")
        elif stored in SIGNED and zp is not None and np.any(zp != 0):
            found.append(f"{node.name}: a weight zero point other than 0")
        if node.attributes.get_int("block_size", 0) and not target.blocked_weights:
            found.append(f"{node.name}: blocked weights, which {target.name} does not run")
        scale = node.inputs[1].const_value
        axis = node.attributes.get_int("axis", 1) if scale is not None and scale.size > 1 else None
        for user in readers:
            if user.op_type in target.per_tensor_weights and axis is not None:
                found.append(f"{node.name}: per-channel weights of {user.op_type} "
                             f"{user.name}, which {target.name} takes per tensor")
            want = target.weight_axes.get(user.op_type)
            if want is not None and axis not in (None, want) and stored != ir.DataType.INT32:
                found.append(f"{node.name}: {user.op_type} weights on axis {axis}, not {want}")
    found += _incomplete_units(model, target)
    if target.static_shapes:
        found += [f"input {name}: dynamic shape" for name in dynamic_inputs(model)]
    return found


def _incomplete_units(model: ir.Model, target: TargetProfile) -> list[str]:
    """Ops of ``quantize_outputs`` that read a quantized activation but whose output some
    reader takes in float."""
    found = []
    fused = fused_chains(list(model.graphs()), target.fused_patterns)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node in fused and all(user in fused for user, _ in node.outputs[0].uses()):
            continue  # inside an op the runtime fuses
        if (not target.quantize_outputs or not target.quantizes_output(node.op_type)
                or node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.outputs):
            continue
        reads_quantized = any(
            v is not None and v.producer() is not None
            and v.producer().op_type == "DequantizeLinear" and _dequantized_constant(v) is None
            for v in node.inputs)
        if not reads_quantized or node.outputs[0].dtype != ir.DataType.FLOAT:
            continue
        end = fused_chain_end(node.outputs[0], target.fused_activations)
        if end.is_graph_output() and node.op_type not in target.quantize_graph_outputs:
            continue  # the target keeps this graph output float
        floats = [user.name for user, _ in end.uses() if user.op_type != "QuantizeLinear"]
        if end.is_graph_output():
            floats.append("the graph output")
        if floats:
            found.append(f"{node.name}: output read in float by {floats[0]}, not a whole "
                         "DQ -> op -> Q unit")
    return found
