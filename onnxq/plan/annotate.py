"""Decide what to quantize: an op registry annotates a graph into a QuantPlan.

Placement follows what ONNX Runtime and other QDQ runtimes fuse: inputs of
compute ops (Conv, Gemm, MatMul, Add, Mul, pooling, Sigmoid, LeakyRelu) are quantized;
Relu/Clip after a compute op are not split from it (the Q after them absorbs them); pass-through
ops (Reshape, Transpose, MaxPool, Concat, Pad, ...) share their input's qparams.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.config import QuantConfig
from onnxq.ops import LAYERS
from onnxq.plan.fragile import find_fragile
from onnxq.spec import BiasSpec, QuantPlan, QuantSpec

PASS_THROUGH = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Pad", "Slice",
    "Split", "Gather", "Expand", "Identity", "DepthToSpace", "SpaceToDepth", "Resize",
}


class Annotator:
    """Builds a QuantPlan for one graph under one config."""

    def __init__(self, config: QuantConfig):
        self.config = config
        self.plan = QuantPlan()

    def activation_spec(self) -> QuantSpec:
        """The spec every quantized activation gets."""
        return QuantSpec(self.config.activations, self.config.activation_symmetric,
                         observer=self.config.observer)

    def is_activation(self, value: ir.Value | None) -> bool:
        """A float tensor computed at run time (not a constant)."""
        return (value is not None and value.const_value is None
                and value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16))

    def activation(self, node: ir.Node, index: int) -> bool:
        """Quantize input ``index`` of ``node`` (a run-time float tensor)."""
        value = node.inputs[index]
        if not self.is_activation(value):
            return False
        if self.config.activations == "none":  # weight-only: the layer still counts
            return True
        self.plan.activations.setdefault(value.name, self.activation_spec())
        self.plan.uses.setdefault(value.name, []).append((node.name, index))
        return True

    def weight(self, node: ir.Node, index: int, axis: int | None) -> bool:
        """Quantize constant input ``index`` per channel along ``axis`` (None: per tensor)."""
        value = node.inputs[index]
        if value is None or not value.is_initializer() or value.dtype != ir.DataType.FLOAT:
            return False
        if not np.isfinite(value.const_value.numpy()).all():
            self.plan.float_nodes[node.name] = "weight holds inf/nan: runs in float"
            return False
        rank = len(value.const_value.shape)
        if axis is not None and axis >= rank:
            axis = None
        self.plan.weights[value.name] = QuantSpec(
            self.config.weights, True, axis, observer=self.config.weight_range_observer)
        return True

    def keep_float(self, node: ir.Node, reason: str) -> None:
        """Record why ``node`` stays in float."""
        self.plan.float_nodes[node.name] = reason

    def bias(self, node: ir.Node, index: int, act_index: int, weight_index: int) -> None:
        """Quantize a 1-D bias to int32 with scale s_input * s_weight."""
        bias = node.inputs[index] if len(node.inputs) > index else None
        if (bias is None or not bias.is_initializer() or bias.dtype != ir.DataType.FLOAT
                or len(bias.const_value.shape) != 1):
            return
        self.plan.biases[bias.name] = BiasSpec(node.inputs[act_index].name,
                                               node.inputs[weight_index].name)


def _binary(a: Annotator, node: ir.Node) -> None:
    if all(a.is_activation(v) for v in node.inputs):
        a.activation(node, 0)
        a.activation(node, 1)
    else:
        a.plan.float_nodes[node.name] = "constant operand: runs in float"


def _single_input(a: Annotator, node: ir.Node) -> None:
    """Pooling and the activations runtimes fuse between Q/DQ (QLinearSigmoid, ...)."""
    a.activation(node, 0)


REGISTRY: dict[str, Callable[[Annotator, ir.Node], None]] = {
    **{op: kind.annotate for op, kind in LAYERS.items()},  # Conv, Gemm, MatMul, LSTM, ...
    "Add": _binary,
    "Mul": _binary,
    "GlobalAveragePool": _single_input,
    "AveragePool": _single_input,
    "Sigmoid": _single_input,
    "LeakyRelu": _single_input,
}
NO_QUANT_NEEDED = PASS_THROUGH | {"Relu", "Clip", "Concat", "Constant", "Shape", "Cast"}
CONTROL_FLOW = {"If", "Loop", "Scan"}
"""Ops whose bodies are annotated like the main graph (they compute nothing themselves)."""


def _excluded(node: ir.Node, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(node.name or "", p) or fnmatch.fnmatchcase(node.op_type, p)
               for p in patterns)


NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax"}
"""Ops whose outputs are never negative (a uint8 grid for them starts at zero)."""


def _non_negative(value: ir.Value | None) -> bool:
    """Whether ``value`` comes, through pass-through ops, from a ReLU, Sigmoid or Softmax
    (or a Clip whose minimum is a constant of at least zero)."""
    producer = value.producer() if value is not None else None
    while producer is not None and producer.op_type in PASS_THROUGH:
        producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
    if producer is None:
        return False
    if producer.op_type == "Clip":
        low = producer.inputs[1] if len(producer.inputs) > 1 else None
        return (low is not None and low.const_value is not None
                and float(low.const_value.numpy().min()) >= 0)
    return producer.op_type in NON_NEGATIVE


def _share_through(a: Annotator, graph: ir.Graph) -> None:
    """Walk backwards: a quantized output of a pass-through op or Concat quantizes its inputs
    with the same qparams, except a Concat that joins never-negative inputs to possibly
    signed ones: sharing would move the never-negative ones' zero point off the grid's end
    (so ORT cannot fold their ReLU into QLinearConv) and double their step, so each input
    gets its own grid (ORT runs QLinearConcat)."""
    for node in reversed(list(graph)):
        if node.name in a.plan.float_nodes or not node.outputs:
            continue
        out = node.outputs[0].name
        if out not in a.plan.activations:
            continue
        if node.op_type in PASS_THROUGH:
            indices = [0]
        elif node.op_type == "Concat":
            indices = range(len(node.inputs))
        else:
            continue
        shared = (node.op_type != "Concat"
                  or len({_non_negative(node.inputs[i]) for i in indices}) == 1)
        for i in indices:
            if a.activation(node, i) and shared:
                a.plan.share(out, node.inputs[i].name)


def annotate(model: ir.Model, config: QuantConfig) -> QuantPlan:
    """Decide, for every tensor of ``model`` (If/Loop/Scan bodies included), whether and how
    it is quantized."""
    a = Annotator(config)
    graphs = list(model.graphs())
    if config.keep_fragile_float:
        for graph in graphs:
            for node, reason in find_fragile(graph).items():
                a.plan.float_nodes[node.name] = f"kept float: {reason}"
    for node in (node for graph in graphs for node in graph):
        if node.name in a.plan.float_nodes:
            continue
        if _excluded(node, config.exclude):
            a.plan.float_nodes[node.name] = "excluded by --exclude"
        elif node.op_type in REGISTRY:
            REGISTRY[node.op_type](a, node)
        elif (node.op_type not in NO_QUANT_NEEDED | CONTROL_FLOW
              and node.domain in ("", "ai.onnx")):
            a.plan.float_nodes[node.name] = (f"no quantized kernel for {node.op_type}: "
                                             "runs in float")
        elif node.domain not in ("", "ai.onnx"):
            a.plan.float_nodes[node.name] = (f"custom op {node.domain}::{node.op_type}: "
                                             "quantized around")
    for graph in graphs:
        _share_through(a, graph)
    return a.plan.bind(model)
