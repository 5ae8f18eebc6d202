"""Activation-range refinement: clip each activation where its consumers' output error is least."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch

from onnxq.numerics import QTYPES, choose_qparams
from onnxq.qparams import QParams
from onnxq.spec import QuantPlan
from onnxq.torch_eval import ActivationQuant
from onnxq.torch_ops import Unsupported, constant, run_node

logger = logging.getLogger(__name__)

LINEAR_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ELEMENTWISE_CONSUMERS = ("Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish")
LADDER = tuple(0.7 ** k for k in range(9))
"""Candidate shares of each end of the observed range, 1.0 down to 0.058 (each end alone)."""


def _range(params: QParams) -> tuple[float, float]:
    grid = QTYPES[params.qtype]
    scale = float(params.scale.reshape(-1)[0])
    zero_point = int(params.zero_point.reshape(-1)[0])
    return (grid.qmin - zero_point) * scale, (grid.qmax - zero_point) * scale


def _fake_quantize(x: torch.Tensor, lo: float, hi: float, qtype: str) -> torch.Tensor:
    scale, zero_point = choose_qparams(lo, hi, QTYPES[qtype], QTYPES[qtype].signed)
    return ActivationQuant(QParams(scale, zero_point, qtype))(x)


def _is_silu(node: ir.Node, index: int) -> bool:
    """``node`` is the Mul of x * Sigmoid(x) and ``index`` its x."""
    other = node.inputs[1 - index] if len(node.inputs) == 2 else None
    producer = other.producer() if other is not None else None
    return (node.op_type == "Mul" and producer is not None and producer.op_type == "Sigmoid"
            and producer.inputs[0] is node.inputs[index])


def _response(node: ir.Node, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the consumer computes from input ``index``, as far as it depends on it alone:
    a Conv/Gemm/MatMul through its FP32 weight (bias left out), an elementwise activation,
    SiLU for x * Sigmoid(x); the tensor itself for anything else."""
    if node.op_type in LINEAR_CONSUMERS and index == 0 and len(node.inputs) > 1:
        weight = constant(node.inputs[1])
        if weight is not None:
            return lambda x: run_node(node, [x, weight])[0]
    if node.op_type in ELEMENTWISE_CONSUMERS:
        return lambda x: run_node(node, [x])[0]
    if _is_silu(node, index):
        return lambda x: x * torch.sigmoid(x)
    return lambda x: x


def consumer_error(plan: QuantPlan, members: list[str], samples: dict[str, list[np.ndarray]],
                   qtype: str, candidates: list[tuple[float, float]],
                   through_consumers: bool = True) -> np.ndarray:
    """Summed relative consumer-output error of quantizing the group ``members`` at each
    (lo, hi) candidate range, on ``samples`` (``through_consumers=False``: the error of the
    tensor itself, for consumers the torch evaluator cannot run)."""
    totals = np.zeros(len(candidates))
    for name in members:
        for node, index in plan.uses.get(name, []):
            respond = _response(node, index) if through_consumers else (lambda x: x)
            reference, errors = 1e-30, np.zeros(len(candidates))
            with torch.no_grad():
                for array in samples.get(name, []):
                    x = torch.from_numpy(array)
                    exact = respond(x)
                    reference += float((exact ** 2).sum())
                    for k, (lo, hi) in enumerate(candidates):
                        quantized = respond(_fake_quantize(x, lo, hi, qtype))
                        errors[k] += float(((quantized - exact) ** 2).sum())
            totals += errors / reference
    return totals


def consumer_errors(plan: QuantPlan, activation_qparams: dict[str, QParams],
                    samples: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Each activation group's consumer error at its current qparams."""
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
    each consumer's output (``_response``: through a Conv/Gemm/MatMul's FP32 weight,
    through Sigmoid/SiLU/LeakyRelu, else the tensor itself), summed over consumers, on
    ``samples`` (a fixed subset of calibration tensors, one array per batch of
    same-shaped samples).  The low end is searched first (``LADDER`` shares of it, the
    high end observed), then the high end; each end shrinks on its own, so a SiLU input's
    long negative tail is clipped without touching its positive range.  The observed
    (min-max) range is kept unless a smaller one scores lower.
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
        for end in (0, 1):
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
            try:
                best = self._best_range(members, params)
            except Unsupported as exc:
                logger.info("kept the observed range of %s: %s", root, exc)
                continue
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
