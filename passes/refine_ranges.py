"""Activation-range refinement: clip each activation where its consumers' output error is least."""

from __future__ import annotations

import logging

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
RATIOS = tuple(0.9 ** k for k in range(12))  # 1.0 down to 0.31 of the observed range


def _range(params: QParams) -> tuple[float, float]:
    grid = QTYPES[params.qtype]
    scale = float(params.scale.reshape(-1)[0])
    zero_point = int(params.zero_point.reshape(-1)[0])
    return (grid.qmin - zero_point) * scale, (grid.qmax - zero_point) * scale


def _fake_quantize(x: torch.Tensor, lo: float, hi: float, qtype: str) -> torch.Tensor:
    scale, zero_point = choose_qparams(lo, hi, QTYPES[qtype], QTYPES[qtype].signed)
    return ActivationQuant(QParams(scale, zero_point, qtype))(x)


def _response(node: ir.Node, index: int):
    """The consumer's linear response to a change in input ``index`` (identity if not linear)."""
    if node.op_type in LINEAR_CONSUMERS and index == 0 and len(node.inputs) > 1:
        weight = constant(node.inputs[1])
        if weight is not None:
            def linear(x: torch.Tensor) -> torch.Tensor:
                return run_node(node, [x, weight])[0]
            return linear
    return lambda x: x


class RefineActivationRangesPass(ir.passes.InPlacePass):
    """Shrink each activation group's range to minimize the error at its consumers' outputs.

    Changes: nothing in the graph; it updates ``activation_qparams`` (which the
    emission pass writes) in place.  For every qparam group, candidate ranges
    ``ratio * observed range`` are scored by the relative squared error that the
    activation's quantization causes at the output of each consuming Conv/Gemm/
    MatMul (through its FP32 weight; other consumers see the tensor itself),
    summed over consumers, on ``samples`` (a fixed subset of calibration tensors, one
    array per batch of same-shaped samples).  The observed (min-max) range is kept unless
    a smaller one scores lower.
    """

    def __init__(self, plan: QuantPlan, activation_qparams: dict[str, QParams],
                 samples: dict[str, list[np.ndarray]]):
        super().__init__()
        self.plan = plan
        self.activation_qparams = activation_qparams
        self.samples = samples

    def _score(self, members: list[str], params: QParams, lo: float, hi: float) -> list[float]:
        totals = np.zeros(len(RATIOS))
        for name in members:
            for node, index in self.plan.uses.get(name, []):
                respond = _response(node, index)
                reference, errors = 1e-30, np.zeros(len(RATIOS))
                with torch.no_grad():
                    for array in self.samples.get(name, []):
                        x = torch.from_numpy(array)
                        reference += float((respond(x) ** 2).sum())
                        for k, ratio in enumerate(RATIOS):
                            err = _fake_quantize(x, lo * ratio, hi * ratio, params.qtype) - x
                            errors[k] += float((respond(err) ** 2).sum())
                totals += errors / reference
        return list(totals)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        changed = 0
        for root, members in self.plan.groups().items():
            params = self.activation_qparams.get(root)
            if params is None:
                continue
            lo, hi = _range(params)
            try:
                scores = self._score(members, params, lo, hi)
            except Unsupported as exc:
                logger.info("kept the observed range of %s: %s", root, exc)
                continue
            best = int(np.argmin(scores))
            if best == 0:
                continue
            grid = QTYPES[params.qtype]
            scale, zp = choose_qparams(lo * RATIOS[best], hi * RATIOS[best], grid, grid.signed)
            for name in members:
                self.activation_qparams[name] = QParams(scale, zp, params.qtype, params.axis)
            changed += 1
        logger.info("refined the range of %d of %d activation groups", changed,
                    len(self.plan.groups()))
        return ir.passes.PassResult(model, False)
