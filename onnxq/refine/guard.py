"""The accuracy guard of ``--min-sqnr``: move the fewest, most harmful activation groups to
16 bits until the output SQNR against FP32 holds on held-out calibration samples."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.config import QuantConfig
from onnxq.emit.simulate import quantized_copy
from onnxq.io.data import Feed
from onnxq.io.runtime import make_session, run
from onnxq.plan.qparams import QParams
from onnxq.refine.ranges import consumer_errors
from onnxq.spec import QuantPlan


@dataclasses.dataclass
class Promotion:
    """One activation group moved to 16 bits, and why."""

    tensor: str
    qtype: str
    consumer_error: float
    """Relative squared error its 8-bit quantization caused at its consumers' outputs."""
    rank: int


def output_sqnr(reference: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """SQNR (dB) over every output of every sample."""
    signal = noise = 0.0
    for ref_out, out in zip(reference, got, strict=True):
        for a, b in zip(ref_out, out, strict=True):
            finite = np.isfinite(a)
            a64 = a[finite].astype(np.float64)
            signal += float(np.sum(a64 ** 2))
            noise += float(np.sum((a64 - b[finite]) ** 2))
    return float("inf") if noise == 0 else 10 * float(np.log10(max(signal, 1e-30) / noise))


def outputs_on(model: ir.Model, feeds: list[Feed], device: str) -> list[list[np.ndarray]]:
    """``model``'s outputs on each of ``feeds`` (ORT)."""
    session = make_session(model, device)
    return [run(session, None, feed) for feed in feeds]


def promote(groups: dict[str, list[str]], errors: dict[str, float],
            qparams: dict[str, QParams], wide: dict[str, QParams],
            measure: Callable[[dict[str, QParams]], float], target: float
            ) -> tuple[dict[str, QParams], list[Promotion], list[float]]:
    """The qparams with the fewest groups (most harmful first, by ``errors``) moved to their
    16-bit qparams ``wide`` for which ``measure`` (output SQNR of a qparams choice) reaches
    ``target``; the promotions; and the SQNR before and after.  Doubling then bisection on
    how many move."""
    order = sorted((root for root in groups if root in errors and root in wide),
                   key=lambda r: -errors[r])

    def moved(count: int) -> dict[str, QParams]:
        chosen = dict(qparams)
        for root in order[:count]:
            for name in groups[root]:
                chosen[name] = wide[name]
        return chosen

    scores = {0: measure(qparams)}
    if scores[0] >= target or not order:
        return qparams, [], [scores[0], scores[0]]
    low, high = 0, 1
    while high < len(order):
        scores[high] = measure(moved(high))
        if scores[high] >= target:
            break
        low, high = high, min(2 * high, len(order))
    else:
        scores[high] = measure(moved(high))
    if scores[high] < target:
        warnings.warn(f"--min-sqnr {target:g} dB not reached: {scores[high]:.1f} dB with every "
                      f"activation at 16 bits (the 8-bit weights limit it); kept that",
                      stacklevel=3)
        low = high - 1
    while high - low > 1:
        middle = (low + high) // 2
        scores[middle] = measure(moved(middle))
        low, high = (middle, high) if scores[middle] < target else (low, middle)
    promotions = [Promotion(root, wide[root].qtype, float(errors[root]), rank + 1)
                  for rank, root in enumerate(order[:high])]
    return moved(high), promotions, [scores[0], scores[high]]


def guard(model: ir.Model, plan: QuantPlan, config: QuantConfig, qparams: dict[str, QParams],
          wide: dict[str, QParams], weights: dict[str, QParams],
          samples: dict[str, list[np.ndarray]], feeds: list[Feed],
          reference: list[list[np.ndarray]]) -> tuple[dict[str, QParams], list[dict], list[float]]:
    """``--min-sqnr`` on ``model`` (FP32 weights, before emission): the activation qparams
    with the fewest, most harmful groups at 16 bits (``wide``) for which the output SQNR on
    ``feeds`` against ``reference`` reaches the target; the promotions; the SQNR before and
    after.  Harm is each group's consumer error on the range-refinement ``samples``."""
    def measure(chosen: dict[str, QParams]) -> float:
        quantized = quantized_copy(model, plan, chosen, weights)
        return output_sqnr(reference, outputs_on(quantized, feeds, config.device))

    errors = consumer_errors(plan, qparams, samples)
    chosen, promotions, sqnr = promote(plan.groups(), errors, qparams, wide, measure,
                                       config.min_sqnr)
    return chosen, [dataclasses.asdict(p) for p in promotions], [round(x, 2) for x in sqnr]
