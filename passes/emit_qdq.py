"""Materialize a QuantPlan as QuantizeLinear/DequantizeLinear nodes (the only emission step)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq.graph import values_by_name
from onnxq.numerics import QTYPES, quantize
from onnxq.qparams import QParams
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)


def dequantized_name(name: str) -> str:
    """The name emission gives the DequantizeLinear output of activation ``name``."""
    return f"{name}_dequantized"


class EmitQDQPass(ir.passes.InPlacePass):
    """Insert Q/DQ pairs for activations and DQ behind integer weights and int32 biases.

    Changes: every planned activation gets ``<name>_QuantizeLinear`` and
    ``<name>_DequantizeLinear`` nodes read by the planned consumers; every planned
    weight/bias initializer is replaced by an integer initializer behind a
    DequantizeLinear, so the file really shrinks.  Scale, zero point and observer
    are written to each node's doc_string for inspection in Netron.
    """

    def __init__(self, plan: QuantPlan, activation_qparams: dict[str, QParams],
                 weight_qparams: dict[str, QParams]):
        super().__init__()
        self.plan = plan
        self.activation_qparams = activation_qparams
        self.weight_qparams = weight_qparams

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        values = values_by_name(graph)
        for name, spec in self.plan.weights.items():
            granularity = "per-tensor" if spec.axis is None else f"per-channel axis {spec.axis}"
            self._emit_constant(graph, graph.initializers[name], self.weight_qparams[name],
                                f"weight {spec.qtype} symmetric {granularity}, {spec.observer}")
        for name, bias in self.plan.biases.items():
            act = self.activation_qparams.get(bias.activation)
            weight = self.weight_qparams.get(bias.weight)
            if act is None or weight is None:
                continue
            value = graph.initializers[name]
            scale = (act.scale.astype(np.float64) * weight.scale.astype(np.float64)).reshape(-1)
            n = value.const_value.shape[0]
            if scale.size not in (1, n):  # grouped ConvTranspose: weight scales repeat per group
                scale = np.tile(scale, n // scale.size)
            if scale.size == 1:
                scale = np.full(n, scale[0])
            params = QParams(scale.astype(np.float32), np.zeros(n, np.int64), "int32", 0)
            self._emit_constant(graph, value, params, "bias int32, scale = s_input * s_weight")
        for name, uses in self.plan.uses.items():
            params = self.activation_qparams.get(name)
            if params is None:
                continue
            self._emit_activation(graph, values[name], uses, params)
        graph.sort()
        modified = bool(self.plan.weights or self.plan.uses)
        if modified:
            logger.info("emitted Q/DQ for %d activations and %d weights",
                        len(self.activation_qparams), len(self.plan.weights))
        return ir.passes.PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        """Every QuantizeLinear feeds a DequantizeLinear and every axis is in range."""
        for node in model.graph:
            if node.op_type == "QuantizeLinear" and not all(
                    user.op_type == "DequantizeLinear" for user, _ in node.outputs[0].uses()):
                raise ir.passes.PostconditionError(f"{node.name} has a consumer that is not a DQ")
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            axis = node.attributes.get_int("axis", None)
            shape = node.inputs[0].shape
            if axis is not None and shape is not None and not -len(shape) <= axis < len(shape):
                raise ir.passes.PostconditionError(f"{node.name}: axis {axis} out of range")

    @staticmethod
    def _qparam_initializers(graph: ir.Graph, prefix: str,
                             params: QParams) -> tuple[ir.Value, ir.Value]:
        grid = QTYPES[params.qtype]
        scale = params.scale.reshape(-1) if params.axis is not None else params.scale.reshape(())
        zp = params.zero_point.reshape(scale.shape).astype(grid.numpy_dtype)
        scale_value = ir.Value(name=f"{prefix}_scale", const_value=ir.tensor(
            scale.astype(np.float32), name=f"{prefix}_scale"))
        zp_value = ir.Value(name=f"{prefix}_zero_point", const_value=ir.tensor(
            zp, dtype=grid.dtype, name=f"{prefix}_zero_point"))
        graph.register_initializer(scale_value)
        graph.register_initializer(zp_value)
        return scale_value, zp_value

    @staticmethod
    def _describe(params: QParams) -> str:
        scale = params.scale.reshape(-1)
        if scale.size == 1:
            return f"scale={scale[0]:.6g} zero_point={int(params.zero_point.reshape(-1)[0])}"
        return f"scales {scale.min():.4g}..{scale.max():.4g} over {scale.size} channels"

    def _emit_constant(self, graph: ir.Graph, value: ir.Value, params: QParams, how: str) -> None:
        """Replace a float initializer by integers + DequantizeLinear."""
        grid = QTYPES[params.qtype]
        w = value.const_value.numpy()
        q = quantize(w, params.scale, params.zero_point, grid, params.axis)
        name = value.name
        q_value = ir.Value(name=f"{name}_quantized", const_value=ir.tensor(
            q.astype(grid.numpy_dtype), dtype=grid.dtype, name=f"{name}_quantized"))
        graph.register_initializer(q_value)
        scale, zp = self._qparam_initializers(graph, name, params)
        attrs = {"axis": params.axis} if params.axis is not None else {}
        dq = ir.node("DequantizeLinear", [q_value, scale, zp], attributes=attrs,
                     name=f"{name}_DequantizeLinear",
                     doc_string=f"{how}; {self._describe(params)}")
        dq.outputs[0].name = f"{name}_dequantized"
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(w.shape)
        value.replace_all_uses_with(dq.outputs[0])
        graph.insert_before(graph.node(0), dq)
        graph.initializers.pop(name)

    def _emit_activation(self, graph: ir.Graph, value: ir.Value,
                         uses: list[tuple[ir.Node, int]], params: QParams) -> None:
        """Insert Q -> DQ after ``value`` and point the planned consumers at the DQ output."""
        grid = QTYPES[params.qtype]
        scale, zp = self._qparam_initializers(graph, value.name, params)
        doc = f"activation {params.qtype}; {self._describe(params)}"
        q = ir.node("QuantizeLinear", [value, scale, zp], name=f"{value.name}_QuantizeLinear",
                    doc_string=doc)
        q.outputs[0].name = f"{value.name}_quantized"
        q.outputs[0].dtype = grid.dtype
        q.outputs[0].shape = value.shape
        dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zp],
                     name=f"{value.name}_DequantizeLinear", doc_string=doc)
        dq.outputs[0].name = dequantized_name(value.name)
        dq.outputs[0].dtype = value.dtype
        dq.outputs[0].shape = value.shape
        producer = value.producer()
        if producer is None:
            graph.insert_before(graph.node(0), [q, dq])
        else:
            graph.insert_after(producer, [q, dq])
        for node, index in uses:
            node.replace_input_with(index, dq.outputs[0])
