"""Decide what to quantize: an op registry annotates a graph into a QuantPlan.

Placement follows what ONNX Runtime and other QDQ runtimes fuse: inputs of
compute ops (Conv, Gemm, MatMul, Add, Mul, pooling, Sigmoid, LeakyRelu) are quantized;
Relu/Clip after a compute op are not split from it (the Q after them absorbs them); pass-through
ops (Reshape, Transpose, MaxPool, Concat, Pad, ...) share their input's qparams.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.config import QuantConfig
from onnxq.graph import fused_chain_end
from onnxq.io.mapped import release_pages
from onnxq.numerics.affine import QTYPES
from onnxq.ops import LAYERS
from onnxq.plan.fragile import find_fragile, fused_chains
from onnxq.plan.overrides import OverrideRule
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
        self.rules: Counter[str] = Counter()
        """How often each of the target's rules changed a decision."""

    def rule(self, node: ir.Node, text: str) -> None:
        """Count a target rule (or override) that changed ``node``'s decisions, and record
        it for the node."""
        self.rules[text] += 1
        applied = self.plan.decisions.setdefault(node.name, [])
        if text not in applied:
            applied.append(text)

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
        uses = self.plan.uses.setdefault(value.name, [])
        if (node.name, index) not in uses:
            uses.append((node.name, index))
        return True

    def weight(self, node: ir.Node, index: int, axis: int | None) -> bool:
        """Quantize constant input ``index`` per channel along ``axis`` (None: per tensor),
        or along the target's axis for the op, or per tensor where the target wants it."""
        value = node.inputs[index]
        if value is None or not value.is_initializer() or value.dtype != ir.DataType.FLOAT:
            return False
        finite = np.isfinite(value.const_value.numpy()).all()
        release_pages(value.const_value)
        if not finite:
            self.plan.float_nodes[node.name] = "weight holds inf/nan: runs in float"
            return False
        target = self.config.target
        qtype = self.config.weights
        if target.constant_type is not None and node.op_type not in WEIGHT_OPS:
            qtype = target.constant_type
            self.rule(node, f"{node.op_type} constants {qtype}")
        if axis is not None and node.op_type in target.per_tensor_weights:
            axis = None
            self.rule(node, f"{node.op_type} weights per tensor")
        elif axis is not None and node.op_type in target.weight_axes:
            axis = target.weight_axes[node.op_type]
            self.rule(node, f"{node.op_type} weights per channel on axis {axis}")
        rank = len(value.const_value.shape)
        if axis is not None and axis >= rank:
            axis = None
        spec = QuantSpec(qtype, True, axis, observer=self.config.weight_range_observer)
        if self.config.block_size and spec.grid.dtype.bitwidth == 4:
            spec = self._in_blocks(node, spec, rank)
        self.plan.weights[value.name] = self.zero_points_in_blocks(node, spec)
        return True

    def zero_points_in_blocks(self, node: ir.Node, spec: QuantSpec) -> QuantSpec:
        """An unsigned 4-bit weight is asymmetric (zero points) in blocks, and int4 per
        channel elsewhere (its grid with no zero points: what 8-bit kernels take)."""
        if spec.qtype != "uint4":
            return spec
        if spec.block_size:
            return dataclasses.replace(spec, symmetric=False)
        self.rule(node, "uint4 zero points only in blocks: other 4-bit weights int4")
        return dataclasses.replace(spec, qtype="int4", symmetric=True)

    def _in_blocks(self, node: ir.Node, spec: QuantSpec, rank: int) -> QuantSpec:
        """``--block-size``: a 4-bit MatMul/Gemm weight in blocks along K, except the
        output head's and lookup tables, which take int8 (a 4-bit embedding table cost the
        tiny BERT 20 dB of output SQNR)."""
        if node.op_type in LOOKUPS:
            self.rule(node, "lookup tables int8 beside block-wise weights")
            return dataclasses.replace(spec, qtype="int8")
        axis = contraction_axis(node, rank)
        if axis is None:
            return spec
        if feeds_output(node):
            self.rule(node, "output head weights int8 per channel")
            return dataclasses.replace(spec, qtype="int8")
        block = self.config.block_size
        self.rule(node, f"{node.op_type} weights in blocks of {block} along K")
        return dataclasses.replace(spec, axis=axis, block_size=block,
                                   observer=block_observer(self.config))

    def keep_float(self, node: ir.Node, reason: str) -> None:
        """Record why ``node`` stays in float."""
        self.plan.float_nodes[node.name] = reason

    def bias(self, node: ir.Node, index: int, act_index: int, weight_index: int) -> None:
        """Quantize a 1-D bias to int32 with scale s_input * s_weight."""
        bias = node.inputs[index] if len(node.inputs) > index else None
        if not self.config.target.quantize_bias and bias is not None:
            self.rule(node, "biases kept float")
            return
        if (bias is None or not bias.is_initializer() or bias.dtype != ir.DataType.FLOAT
                or len(bias.const_value.shape) != 1):
            return
        weight = self.plan.weights.get(node.inputs[weight_index].name)
        rank = len(node.inputs[weight_index].const_value.shape)
        if weight is not None and weight.axis not in (None, LAYERS[node.op_type].weight_axis(
                node, rank)):  # scales per input channel: no int32 bias scale per output
            self.rule(node, "biases kept float")
            return
        self.plan.biases[bias.name] = BiasSpec(node.inputs[act_index].name,
                                               node.inputs[weight_index].name)


def block_observer(config: QuantConfig) -> str:
    """Block scales from the block's extreme (``minmax``: the better of its two placements
    by rounding MSE) unless ``--weight-observer`` asks for ``mse`` (shrunk too): that gained
    0.3-0.6 dB output SQNR on a Gaussian MLP stack and lost 0.6-2.6 dB on the tiny BERT,
    whose outlier input channels make weight MSE a poor proxy."""
    return "minmax" if config.weight_observer == "auto" else config.weight_observer


def contraction_axis(node: ir.Node, rank: int) -> int | None:
    """The K axis of a rank-2 MatMul/Gemm weight (blocks run along it), else None."""
    if rank != 2 or node.op_type not in ("MatMul", "Gemm"):
        return None
    return 1 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 0


def feeds_output(node: ir.Node) -> bool:
    """Whether ``node``'s output reaches a graph output through pass-through ops and Adds
    alone (an output head)."""
    value = node.outputs[0]
    while not value.is_graph_output():
        users = list(value.uses())
        if len(users) != 1 or users[0][0].op_type not in PASS_THROUGH | {"Add"}:
            return False
        value = users[0][0].outputs[0]
    return True


def _binary(a: Annotator, node: ir.Node) -> None:
    if all(a.is_activation(v) for v in node.inputs):
        a.activation(node, 0)
        a.activation(node, 1)
    else:
        a.plan.float_nodes[node.name] = "constant operand: runs in float"


def _single_input(a: Annotator, node: ir.Node) -> None:
    """Pooling and the activations runtimes fuse between Q/DQ (QLinearSigmoid, ...)."""
    a.activation(node, 0)


def _every_input(a: Annotator, node: ir.Node) -> None:
    """The target's ``quantized_ops``: every run-time float input quantized, every float
    constant as a per-tensor weight."""
    for index, value in enumerate(node.inputs):
        if not a.activation(node, index) and value is not None and value.is_initializer():
            a.weight(node, index, None)
    a.rule(node, f"{node.op_type} quantized for the target")


REGISTRY: dict[str, Callable[[Annotator, ir.Node], None]] = {
    **{op: kind.annotate for op, kind in LAYERS.items()},  # Conv, Gemm, MatMul, LSTM, ...
    "Add": _binary,
    "Mul": _binary,
    "GlobalAveragePool": _single_input,
    "AveragePool": _single_input,
    "Sigmoid": _single_input,
    "LeakyRelu": _single_input,
}
LOOKUPS = {"Gather"}
"""Ops whose constant input is a table rows are picked from."""
DEFAULT_BLOCK = 32
"""The block an override's ``per-block`` granularity takes without ``--block-size``."""
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
"""Ops whose constant input is a layer weight (of the ``--weights`` type on every target)."""
NO_QUANT_NEEDED = PASS_THROUGH | {"Concat", "Constant", "Shape", "Cast"}
FUSABLE = {"Relu", "Clip"}
"""Activations a target may fuse into the op before them (``fused_activations``); where it
does not, they quantize their input like Sigmoid."""
NOT_QUANTIZED = {"Shape", "Size", "Cast", "Constant"}
"""Ops whose output is never quantized, even on targets that quantize every output."""
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


def _chain_inputs(a: Annotator, node: ir.Node, fused: set[ir.Node]) -> None:
    """A node of a fused chain quantizes only the inputs that come from outside it."""
    for index, value in enumerate(node.inputs):
        if value is not None and value.producer() not in fused:
            a.activation(node, index)
    a.rule(node, "fused chain quantized at its borders")


def _quantize_outputs(a: Annotator, graph: ir.Graph, fused: set[ir.Node]) -> None:
    """Where the target wants whole DQ -> op -> Q units: the output of every op of
    ``quantize_outputs`` that reads a quantized input is quantized too (a graph output only
    for the ops of ``quantize_graph_outputs``), and all its readers read it through the DQ."""
    target, plan = a.config.target, a.plan
    for node in graph:
        if (not node.outputs or node.name in plan.float_nodes or node.op_type in NOT_QUANTIZED
                or not target.quantizes_output(node.op_type)):
            continue
        quantized_reader = any((node.name, i) in plan.uses.get(v.name, ())
                               for i, v in enumerate(node.inputs) if v is not None)
        inside = node in fused and all(user in fused for user, _ in node.outputs[0].uses())
        if not quantized_reader or inside:
            continue
        value = fused_chain_end(node.outputs[0], target.fused_activations)
        if not a.is_activation(value) or (value.is_graph_output()
                                          and node.op_type not in target.quantize_graph_outputs):
            continue
        planned = plan.uses.get(value.name, [])
        missing = [(user, i) for user, i in value.uses() if (user.name, i) not in planned]
        output = value.is_graph_output() and value.name not in plan.outputs
        if not missing and not output:
            continue
        a.rule(node, "outputs quantized for whole DQ -> op -> Q units")
        plan.activations.setdefault(value.name, a.activation_spec())
        plan.uses.setdefault(value.name, [])
        for user, index in missing:
            a.activation(user, index)
        if output:
            plan.outputs.append(value.name)


def _override_targets(a: Annotator, graphs: list[ir.Graph], rule: OverrideRule
                      ) -> tuple[dict[str, ir.Node], dict[str, ir.Node]]:
    """The planned weights and activations ``rule`` reaches, each with a node that reads it:
    the weights and read activations of the nodes it matches, or the tensors it names."""
    plan = a.plan
    readers = {}
    for graph in graphs:
        for node in graph:
            for value in node.inputs:
                if value is not None:
                    readers.setdefault(value.name, node)
    if rule.tensor is not None:
        return ({name: readers[name] for name in plan.weights if rule.matches_tensor(name)},
                {name: readers[name] for name in plan.activations
                 if rule.matches_tensor(name) and name in readers})
    weights, activations = {}, {}
    uses = {(node, index): name for name, pairs in plan.uses.items() for node, index in pairs}
    for node in (node for graph in graphs for node in graph):
        if node.name in plan.float_nodes or not rule.matches_node(node.name or "", node.op_type):
            continue
        for index, value in enumerate(node.inputs):
            if value is not None and value.name in plan.weights:
                weights[value.name] = node
            if (node.name, index) in uses:
                activations[uses[node.name, index]] = node
    return weights, activations


def _override(a: Annotator, graphs: list[ir.Graph], rule: OverrideRule) -> None:
    """Set what ``rule`` sets on the weights and activations it reaches (an activation's
    whole qparams group takes the type) and record it for their nodes (a weight type
    recorded pins the weight against bit allocation); warn when it reaches none."""
    plan = a.plan
    weights, activations = _override_targets(a, graphs, rule)
    changed: list[ir.Node] = []
    for name, node in weights.items():
        spec = plan.weights[name]
        rank = len(next(v for v in node.inputs
                        if v is not None and v.name == name).const_value.shape)
        if rule.weights is not None:
            spec = dataclasses.replace(spec, qtype=rule.weights)
        if rule.granularity == "per-tensor":
            spec = dataclasses.replace(spec, axis=None, block_size=None)
        elif rule.granularity == "per-block" and contraction_axis(node, rank) is not None:
            spec = dataclasses.replace(spec, axis=contraction_axis(node, rank),
                                       block_size=a.config.block_size or DEFAULT_BLOCK,
                                       observer=block_observer(a.config))
        elif rule.granularity == "per-channel" and node.op_type in LAYERS:
            spec = dataclasses.replace(spec, axis=LAYERS[node.op_type].weight_axis(node, rank),
                                       block_size=None)
        if rule.weights is not None or rule.granularity is not None:
            plan.weights[name] = a.zero_points_in_blocks(node, dataclasses.replace(
                spec, symmetric=True))  # the same type still counts: it pins the weight
            changed.append(node)
    if rule.activations is not None:
        groups = plan.groups()
        grid = QTYPES[rule.activations]
        for name, node in activations.items():
            for member in groups[plan.group(name)]:
                plan.activations[member] = dataclasses.replace(
                    plan.activations[member], qtype=rule.activations, symmetric=grid.signed)
            changed.append(node)
    for node in dict.fromkeys(changed):
        a.rule(node, rule.where)
    if not changed:
        warnings.warn(f"{rule.where} ({rule.describe()}) changes no quantized node or tensor; "
                      "check the names with --plan-out", stacklevel=2)


def annotate(model: ir.Model, config: QuantConfig, rules: Counter[str] | None = None
             ) -> QuantPlan:
    """Decide, for every tensor of ``model`` (If/Loop/Scan bodies included), whether and how
    it is quantized, under ``config.target``'s rules (how often each changed a decision is
    counted into ``rules``)."""
    a = Annotator(config)
    target = config.target
    graphs = list(model.graphs())
    if config.keep_fragile_float:
        for graph in graphs:
            for node, reason in find_fragile(graph).items():
                a.plan.float_nodes[node.name] = f"kept float: {reason}"
    fused = fused_chains(graphs, target.fused_patterns)
    for node in (node for graph in graphs for node in graph):
        if node.name in a.plan.float_nodes:
            continue
        skip = next((rule for rule in config.overrides
                     if rule.skip and rule.matches_node(node.name or "", node.op_type)), None)
        if skip is not None:
            a.plan.float_nodes[node.name] = f"skipped by {skip.where}"
            a.rule(node, skip.where)
        elif _excluded(node, config.exclude):
            a.plan.float_nodes[node.name] = "excluded by --exclude"
        elif node in fused:
            _chain_inputs(a, node, fused)
        elif node.op_type in target.float_ops:
            a.plan.float_nodes[node.name] = f"kept float on --target {target.name}"
            a.rule(node, f"{node.op_type} kept float")
        elif node.op_type in LAYERS or (node.op_type in REGISTRY
                                        and not target.quantizes_op(node.op_type)):
            REGISTRY[node.op_type](a, node)
        elif (target.quantizes_op(node.op_type) and node.domain in ("", "ai.onnx")
              and node.op_type not in NO_QUANT_NEEDED | FUSABLE | CONTROL_FLOW | NOT_QUANTIZED):
            _every_input(a, node)
        elif node.op_type in FUSABLE and node.op_type not in target.fused_activations:
            _single_input(a, node)
        elif (node.op_type not in NO_QUANT_NEEDED | FUSABLE | CONTROL_FLOW
              and node.domain in ("", "ai.onnx")):
            a.plan.float_nodes[node.name] = (f"no quantized kernel for {node.op_type}: "
                                             "runs in float")
        elif node.domain not in ("", "ai.onnx"):
            a.plan.float_nodes[node.name] = (f"custom op {node.domain}::{node.op_type}: "
                                             "quantized around")
    for graph in graphs:
        _share_through(a, graph)
    if target.quantize_outputs:
        for graph in graphs:
            _quantize_outputs(a, graph, fused)
            _share_through(a, graph)
    for rule in config.overrides:
        if not rule.skip:
            _override(a, graphs, rule)
    if rules is not None:
        rules.update(a.rules)
    return a.plan.bind(model)
