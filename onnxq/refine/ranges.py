"""Activation-range refinement: clip each activation where its consumers' output error is least."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.numerics.affine import QTYPES, choose_qparams
from onnxq.ops import LAYERS
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)

LINEAR_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # exp-free: no overflow for large |x|


def _hard_sigmoid(node: ir.Node, x: np.ndarray) -> np.ndarray:
    alpha = node.attributes.get_float("alpha", 0.2)
    return np.clip(alpha * x + node.attributes.get_float("beta", 0.5), 0.0, 1.0)


ELEMENTWISE_CONSUMERS: dict[str, Callable[[ir.Node, np.ndarray], np.ndarray]] = {
    "Sigmoid": lambda node, x: _sigmoid(x),
    "Tanh": lambda node, x: np.tanh(x),
    "Relu": lambda node, x: np.maximum(x, 0.0),
    "LeakyRelu": lambda node, x: np.where(x >= 0, x, node.attributes.get_float("alpha", 0.01) * x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda node, x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
}
"""The elementwise consumers range refinement measures through, in numpy (float32 in, float32
out), each as ONNX defines it."""
LADDER = tuple(0.7 ** k for k in range(9))
"""Candidate shares of each end of the observed range, 1.0 down to 0.058 (each end alone)."""


WINDOW_ELEMENTS = 1 << 15
"""Elements of each sample of a tensor that range refinement keeps (``sample_window``)."""
OUTPUT_CHANNELS = 64
"""Output channels of a consumer layer through which range refinement measures error."""


def _range(params: QParams) -> tuple[float, float]:
    grid = QTYPES[params.qtype]
    scale = float(params.scale.reshape(-1)[0])
    zero_point = int(params.zero_point.reshape(-1)[0])
    return (grid.qmin - zero_point) * scale, (grid.qmax - zero_point) * scale


def _fake_quantize(x: np.ndarray, candidates: list[tuple[float, float]], qtype: str
                   ) -> np.ndarray:
    """``x`` quantized and dequantized at each (lo, hi) candidate range, stacked on a new
    leading axis (ONNX Q/DQ: ``x / s``, round half to even, clamp; float32)."""
    grid = QTYPES[qtype]
    lo, hi = (np.array(ends, np.float64) for ends in zip(*candidates, strict=True))
    scale, zero_point = choose_qparams(lo, hi, grid, grid.signed)
    shape = (len(candidates),) + (1,) * x.ndim
    scale = scale.reshape(shape)
    zero_point = zero_point.astype(np.float32).reshape(shape)
    q = np.round(x[None] / scale)
    q += zero_point
    np.clip(q, grid.qmin, grid.qmax, out=q)
    q -= zero_point
    q *= scale
    return q


def _reads_structure(node: ir.Node, index: int) -> bool:
    """Whether the consumer's response mixes elements (a Conv/Gemm/MatMul through its
    weight) rather than acting on each alone."""
    return (node.op_type in LINEAR_CONSUMERS and index == 0 and len(node.inputs) > 1
            and node.inputs[1] is not None and node.inputs[1].const_value is not None)


def _window_axes(plan: QuantPlan, name: str, rank: int) -> list[int] | None:
    """Axes of ``name`` that a window may cut without changing what its consumers compute
    at the kept positions (up to the window's border): a Conv's spatial axes, a MatMul's
    row axes, none for a Gemm; None when every consumer acts on each element alone."""
    axes = None
    for node, index in plan.readers(name):
        if not _reads_structure(node, index):
            continue
        allowed = (set(range(2, rank)) if node.op_type in ("Conv", "ConvTranspose")
                   else set(range(1, rank - 1)) if node.op_type == "MatMul" else set())
        axes = allowed if axes is None else axes & allowed
    return None if axes is None else sorted(axes)


def sample_window(plan: QuantPlan, name: str, array: np.ndarray,
                  limit: int = WINDOW_ELEMENTS) -> np.ndarray:
    """At most ``limit`` elements of each sample of ``array`` (a batch of samples of
    ``name``; a copy, or the array itself when it is small enough): a centred window over
    the axes ``_window_axes`` allows, or, when every consumer acts on each element alone, a
    fixed random subset of the elements (every channel represented, whatever the layout)."""
    per_sample = array.size // array.shape[0] if array.ndim > 1 and array.shape[0] else 0
    if per_sample <= limit:
        return array
    axes = _window_axes(plan, name, array.ndim)
    if axes is None:
        pick = np.sort(np.random.default_rng(0).choice(per_sample, limit, replace=False))
        return np.ascontiguousarray(array.reshape(array.shape[0], -1)[:, pick])
    if not axes:
        return array
    fixed = per_sample // int(np.prod([array.shape[a] for a in axes]))
    room = max(limit // max(fixed, 1), 1)
    keep = {}
    for done, axis in enumerate(sorted(axes, key=lambda a: array.shape[a])):
        keep[axis] = max(min(array.shape[axis], int(room ** (1 / (len(axes) - done)))), 1)
        room = max(room // keep[axis], 1)
    index = tuple(slice((array.shape[a] - keep[a]) // 2, (array.shape[a] - keep[a]) // 2
                        + keep[a]) if a in keep else slice(None) for a in range(array.ndim))
    return np.ascontiguousarray(array[index])


def _is_silu(node: ir.Node, index: int) -> bool:
    """``node`` is the Mul of x * Sigmoid(x) and ``index`` its x."""
    other = node.inputs[1 - index] if len(node.inputs) == 2 else None
    producer = other.producer() if other is not None else None
    return (node.op_type == "Mul" and producer is not None and producer.op_type == "Sigmoid"
            and producer.inputs[0] is node.inputs[index])


SATURATING_ENDS = {"Sigmoid": (0, 1), "Tanh": (0, 1), "HardSigmoid": (0, 1), "HardSwish": (0,),
                   "LeakyRelu": (0,), "Relu": (0,)}
"""The ends of an elementwise consumer's input beyond which its output flattens (LeakyRelu's
negative side is damped by its slope)."""


def _saturating_ends(node: ir.Node, index: int) -> tuple[int, ...]:
    """The ends (0 low, 1 high) of input ``index`` beyond which ``node``'s output stays flat;
    SiLU (x * Sigmoid(x)) flattens below, a linear consumer nowhere."""
    if _is_silu(node, index):
        return (0,)
    return SATURATING_ENDS.get(node.op_type, ()) if index == 0 else ()


def refinable_ends(plan: QuantPlan, members: list[str]) -> tuple[int, ...]:
    """The ends of a group's range that refinement searches: those where every consumer of
    every member saturates.  Elsewhere clipping cuts the rare peaks that a few scoring
    samples under-represent (a detector's confident objects), so the observed end stays."""
    uses = [use for name in members for use in plan.readers(name)]
    if not uses:
        return ()
    return tuple(end for end in (0, 1)
                 if all(end in _saturating_ends(node, index) for node, index in uses))


def refinable(plan: QuantPlan, activation_qparams: dict[str, QParams]) -> list[str]:
    """The quantized activations whose group has an end that refinement searches."""
    return sorted(name for root, members in plan.groups().items()
                  if root in activation_qparams and refinable_ends(plan, members)
                  for name in members)


def _output_channel_sample(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    """``weight`` cut to at most OUTPUT_CHANNELS evenly spaced output channels (a layer's
    relative output error summed over a spread of its channels estimates it over all of
    them at a fraction of the cost); whole when the layer is grouped or small."""
    grouped = node.op_type == "Conv" and node.attributes.get_int("group", 1) != 1
    if node.op_type not in ("Conv", "Gemm", "MatMul") or grouped or weight.ndim < 2:
        return weight
    axis = LAYERS[node.op_type].weight_axis(node, weight.ndim)
    count = weight.shape[axis]
    if count <= OUTPUT_CHANNELS:
        return weight
    keep = np.linspace(0, count - 1, OUTPUT_CHANNELS).round().astype(np.int64)
    return np.ascontiguousarray(np.take(weight, keep, axis=axis))


def _linear_response(node: ir.Node) -> Callable[[np.ndarray], np.ndarray]:
    """A Conv/Gemm/MatMul through its FP32 weight (bias left out), evaluated with the torch
    op registry: only the accuracy guard's ranking measures through layers, so torch is
    imported here, not for range refinement."""
    import torch

    from onnxq.refine.rounding.torch_ops import run_node

    weight = torch.from_numpy(np.array(_output_channel_sample(
        node, node.inputs[1].const_value.numpy()), np.float32))

    def respond(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return run_node(node, [torch.from_numpy(x), weight])[0].numpy()

    return respond


def _response(node: ir.Node, index: int) -> Callable[[np.ndarray], np.ndarray]:
    """What the consumer computes from input ``index``, as far as it depends on it alone:
    a Conv/Gemm/MatMul through its FP32 weight (bias left out), an elementwise activation,
    SiLU for x * Sigmoid(x); the tensor itself for anything else."""
    if _reads_structure(node, index):
        return _linear_response(node)
    if node.op_type in ELEMENTWISE_CONSUMERS and node.domain in ("", "ai.onnx"):
        return lambda x: ELEMENTWISE_CONSUMERS[node.op_type](node, x)
    if _is_silu(node, index):
        return lambda x: x * _sigmoid(x)
    return lambda x: x


def _stackable(node: ir.Node, index: int, x: np.ndarray) -> bool:
    """The consumer computes candidates concatenated on axis 0 as separate samples."""
    if x.ndim == 0 or (node.op_type == "MatMul" and x.ndim == 1):
        return False
    return not (node.op_type == "Gemm" and index == 0 and node.attributes.get_int("transA", 0))


def _squared_sums(diff: np.ndarray) -> np.ndarray:
    """Per leading index, the sum of squares of ``diff`` (accumulated in float64)."""
    flat = diff.reshape(diff.shape[0], -1)
    return np.einsum("ij,ij->i", flat, flat, dtype=np.float64)


def _candidate_errors(respond: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                      exact: np.ndarray, qtype: str, candidates: list[tuple[float, float]],
                      stackable: bool) -> np.ndarray:
    """Squared consumer-output error of ``x`` quantized at each candidate range; the
    candidates go through the consumer together (concatenated on axis 0) when
    ``stackable``."""
    quantized = _fake_quantize(x, candidates, qtype)
    if stackable:
        out = respond(quantized.reshape(-1, *x.shape[1:]))
        return _squared_sums(out.reshape(len(candidates), *exact.shape) - exact)
    return np.array([float(_squared_sums((respond(q) - exact)[None])[0]) for q in quantized])


def consumer_error(plan: QuantPlan, members: list[str], samples: dict[str, list[np.ndarray]],
                   qtype: str, candidates: list[tuple[float, float]],
                   through_consumers: bool = True) -> np.ndarray:
    """Summed relative consumer-output error of quantizing the group ``members`` at each
    (lo, hi) candidate range, on ``samples`` (``through_consumers=False``: the error of the
    tensor itself, for consumers the torch evaluator cannot run)."""
    totals = np.zeros(len(candidates))
    for name in members:
        for node, index in plan.readers(name):
            respond = _response(node, index) if through_consumers else (lambda x: x)
            reference, errors = 1e-30, np.zeros(len(candidates))
            for x in samples.get(name, []):
                exact = respond(x)
                reference += float(_squared_sums(exact[None])[0])
                errors += _candidate_errors(respond, x, exact, qtype, candidates,
                                            _stackable(node, index, x))
            totals += errors / reference
    return totals


def consumer_errors(plan: QuantPlan, activation_qparams: dict[str, QParams],
                    samples: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Each activation group's consumer error at its current qparams (through a layer's
    weight where the torch evaluator runs the layer)."""
    from onnxq.refine.rounding.torch_ops import Unsupported

    errors = {}
    for root, members in plan.groups().items():
        params = activation_qparams.get(root)
        if params is None:
            continue
        try:
            error = consumer_error(plan, members, samples, params.qtype, [_range(params)])
        except Unsupported:
            error = consumer_error(plan, members, samples, params.qtype, [_range(params)],
                                   through_consumers=False)
        errors[root] = float(error[0])
    return errors


class RefineActivationRangesPass(ir.passes.InPlacePass):
    """Shrink each activation group's range to minimize the error at its consumers' outputs.

    Changes: nothing in the graph; it updates ``activation_qparams`` (which the
    emission pass writes) in place.  For every qparam group, candidate ranges are
    scored by the relative squared error that the activation's quantization causes at
    each consumer's output (``_response``: through Sigmoid/SiLU/ReLU/LeakyRelu, else the
    tensor itself; the guard's ranking also through a Conv/Gemm/MatMul's FP32 weight),
    summed over consumers, on ``samples`` (a fixed subset of calibration tensors, one array
    per batch of same-shaped samples).  Only the ends where every consumer saturates are searched
    (``refinable_ends``: both ends of a Sigmoid/Tanh input, the low end of a SiLU, ReLU or
    HardSwish input); the low end first (``LADDER`` shares of it, the high end observed),
    then the high end, each on its own, so a SiLU input's long negative tail is clipped
    without touching its positive range.  The observed (min-max) range is kept unless a
    smaller one scores lower.
    """

    def __init__(self, plan: QuantPlan, activation_qparams: dict[str, QParams],
                 samples: dict[str, list[np.ndarray]]):
        super().__init__()
        self.plan = plan
        self.activation_qparams = activation_qparams
        self.samples = samples

    def _best_range(self, members: list[str], params: QParams) -> tuple[float, float] | None:
        """The (lo, hi) of least consumer error, or None when the observed range is best."""
        lo, hi = observed = _range(params)
        best, best_score = observed, None
        for end in refinable_ends(self.plan, members):
            if (lo, hi)[end] == 0.0:
                continue
            candidates = [(lo * r, hi) if end == 0 else (lo, hi * r) for r in LADDER]
            scores = consumer_error(self.plan, members, self.samples, params.qtype, candidates)
            if best_score is None:
                best_score = scores[0]
            k = int(np.argmin(scores))
            if scores[k] < best_score:
                best, best_score = candidates[k], scores[k]
                lo, hi = best
        return None if best == observed else best

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        changed = 0
        for root, members in self.plan.groups().items():
            params = self.activation_qparams.get(root)
            if params is None:
                continue
            best = self._best_range(members, params)
            if best is None:
                continue
            grid = QTYPES[params.qtype]
            scale, zp = choose_qparams(*best, grid, grid.signed)
            for name in members:
                self.activation_qparams[name] = QParams(scale, zp, params.qtype, params.axis)
            changed += 1
        logger.info("refined the range of %d of %d activation groups", changed,
                    len(self.plan.groups()))
        return ir.passes.PassResult(model, False)
