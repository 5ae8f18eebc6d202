"""A QDQ model read against its FP32 source: the FP32 model prepared as the quantized one
was (same node and tensor names), the quantizers of the QDQ graph, and the nodes that read
them (the report's rows)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir

from onnxq.config import QuantConfig
from onnxq.emit.qdq import TENSOR_KEY
from onnxq.errors import OnnxqError
from onnxq.numerics.affine import dequantize
from onnxq.prepare.stage import normalize, prepare, run_passes
from onnxq.prepare.static_shapes import FixInputShapesPass, dynamic_inputs
from onnxq.prepare.tolerant_shape_inference import TolerantShapeInferencePass
from onnxq.targets.profile import load_target, targets

QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """One DequantizeLinear of the QDQ graph and what it dequantizes."""

    dq: ir.Node
    kind: str
    """``activation`` (behind a QuantizeLinear), ``weight``, ``bias`` (int32) or ``lookup``
    (rows a Gather picked from an integer table)."""
    tensor: str
    """The float tensor it stands for: the activation's name in the FP32 model, or the
    integer initializer's."""

    @property
    def qtype(self) -> str:
        """The integer grid, as onnxq names it (int4 weights in int8 containers: int4)."""
        stored = self.dq.inputs[0].dtype.name.lower()
        if stored == "int8" and self.kind == "weight":
            q = self.dq.inputs[0].const_value.numpy()
            if q.size and q.min() >= -8 and q.max() <= 7:
                return "int4"
        return stored

    @property
    def scale(self) -> np.ndarray:
        return self.dq.inputs[1].const_value.numpy()

    @property
    def zero_point(self) -> np.ndarray:
        zp = self.dq.inputs[2] if len(self.dq.inputs) > 2 else None
        return (np.zeros_like(self.scale, np.int64) if zp is None or zp.const_value is None
                else zp.const_value.numpy().astype(np.int64))

    @property
    def granularity(self) -> str:
        axis = self.dq.attributes.get_int("axis", None)
        block = self.dq.attributes.get_int("block_size", None)
        if self.scale.size == 1:
            return "per-tensor"
        axis = 1 if axis is None else axis
        return f"blocks of {block} on axis {axis}" if block else f"per-channel axis {axis}"

    def dequantized(self) -> np.ndarray:
        """The constant this DQ computes (weights and biases; a lookup's whole table, whose
        scales run along its last axis, the columns)."""
        table = self.dq.inputs[0]
        axis = self.dq.attributes.get_int("axis", 1) if self.scale.size > 1 else None
        if self.kind == "lookup":
            table = table.producer().inputs[0]
            axis = None if axis is None else len(table.const_value.shape) - 1
        return dequantize(table.const_value.numpy().astype(np.int64), self.scale,
                          self.zero_point, axis, self.dq.attributes.get_int("block_size", None))


@dataclasses.dataclass
class Row:
    """A node of the QDQ graph that reads at least one quantizer (one row of the report)."""

    node: ir.Node
    depth: int
    inputs: dict[int, Quantizer]
    """Input index -> the quantizer it reads."""


def stored_config(model: ir.Model) -> dict:
    """The ``onnxq.config`` metadata onnxq writes (empty for a model from another tool)."""
    try:
        return json.loads(model.metadata_props.get("onnxq.config", "{}"))
    except json.JSONDecodeError:
        return {}


def stored_report(model: ir.Model) -> dict:
    """The ``onnxq.report`` metadata onnxq writes (empty for a model from another tool)."""
    try:
        return json.loads(model.metadata_props.get("onnxq.report", "{}"))
    except json.JSONDecodeError:
        return {}


def _prepare_config(stored: dict) -> QuantConfig | None:
    """The config of the prepare passes the quantized model went through, when onnxq made
    it: fusion, equalization, the target's rewrites, [K, N] Gemm weights for blocks."""
    target = stored.get("target", {})
    if not stored or target.get("name") not in targets():
        return None
    profile = dataclasses.replace(load_target(target["name"]),
                                  keep_reduced_dims=bool(target.get("keep_reduced_dims")))
    return QuantConfig(target=profile, fuse=bool(stored.get("fuse", True)),
                       equalize=str(stored.get("equalize", "none")),
                       weights=stored.get("weights"), block_size=stored.get("block_size"))


def prepared_reference(fp32: ir.Model, quantized: ir.Model) -> ir.Model:
    """``fp32`` (changed in place) as the quantized model's FP32 network: its inputs fixed
    to the quantized model's static shapes, then the prepare passes onnxq ran on it, at its
    opset.  A quantized node the result lacks (another source model) is one error line."""
    shapes = {value.name: tuple(value.shape) for value in quantized.graph.inputs
              if value.name not in dynamic_inputs(quantized)}
    fixed = {name: dims for name, dims in shapes.items() if name in dynamic_inputs(fp32)}
    if fixed:
        run_passes([FixInputShapesPass(fixed), TolerantShapeInferencePass()], fp32)
    config = _prepare_config(stored_config(quantized))
    opset = quantized.opset_imports.get("", 13)
    if config is not None:
        prepare(fp32, config, opset)
    else:
        normalize(fp32)
    nodes = {node.name: node.op_type for node in fp32.graph}
    for node in quantized.graph:
        if node.op_type not in QDQ and nodes.get(node.name) != node.op_type:
            raise OnnxqError(f"the quantized model's node {node.name!r} ({node.op_type}) is "
                             "not in the FP32 model as onnxq prepares it: pass the FP32 model "
                             "it was quantized from (by this onnxq version)")
    return fp32


def _quantizer(dq: ir.Node, renamed: dict[str, str]) -> Quantizer | None:
    source = dq.inputs[0]
    producer = source.producer()
    if producer is not None and producer.op_type == "QuantizeLinear":
        name = producer.inputs[0].name
        return Quantizer(dq, "activation", renamed.get(name, name))
    if producer is not None and producer.op_type == "Gather":
        table = producer.inputs[0]
        if table.const_value is not None:
            return Quantizer(dq, "lookup", table.name)
    if source.const_value is not None:
        kind = "bias" if source.dtype == ir.DataType.INT32 else "weight"
        return Quantizer(dq, kind, source.name)
    return None


def float_names(model: ir.Model) -> dict[str, str]:
    """A quantized graph output's float tensor (renamed by emission, its name handed to
    the DequantizeLinear) -> the name the FP32 model gives it."""
    return {node.inputs[0].name: node.metadata_props[TENSOR_KEY] for node in model.graph
            if node.op_type == "QuantizeLinear" and TENSOR_KEY in node.metadata_props}


def quantized_rows(model: ir.Model) -> list[Row]:
    """The main graph's nodes that read a DequantizeLinear output, in graph order (nodes
    inside If/Loop/Scan bodies are not rows)."""
    renamed = float_names(model)
    quantizers = {}
    for node in model.graph:
        if node.op_type == "DequantizeLinear":
            found = _quantizer(node, renamed)
            if found is not None:
                quantizers[node.outputs[0].name] = found
    rows = []
    for depth, node in enumerate(model.graph):
        if node.op_type in QDQ:
            continue
        inputs = {index: quantizers[value.name] for index, value in enumerate(node.inputs)
                  if value is not None and value.name in quantizers}
        if inputs:
            rows.append(Row(node, depth, inputs))
    return rows
