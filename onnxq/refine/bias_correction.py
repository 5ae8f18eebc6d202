"""Bias correction: fold the mean output shift caused by weight rounding into the bias."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxq.graph import clip_bounds
from onnxq.numerics.affine import QTYPES, fake_quantize
from onnxq.ops import LAYERS
from onnxq.plan.qparams import QParams
from onnxq.prepare.fuse_batchnorm import BN_STATS
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)


def _layer(bias: ir.Value) -> ir.Node:
    return next(node for node, _ in bias.uses())


def _set_bias(value: ir.Value, new: np.ndarray) -> None:
    value.const_value = ir.tensor(new.astype(np.float32), name=value.name)


def _output_shift(node: ir.Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[(Q(W) - W) x] per output channel, given the input's per-channel mean (the layer
    kind's rule; None where bias correction does not apply)."""
    kind = LAYERS.get(node.op_type)
    return None if kind is None else kind.output_shift(node, delta, mean)


_normal_cdf = np.vectorize(lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))))


def clipped_normal_mean(mean: np.ndarray, std: np.ndarray, low: float, high: float
                        ) -> np.ndarray:
    """E[clip(X, low, high)] for X ~ N(mean, std^2), per channel (infinite bounds allowed)."""
    std = np.maximum(std, 1e-12)
    a, b = (low - mean) / std, (high - mean) / std

    def pdf(z: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * np.minimum(z * z, 1e4)) / math.sqrt(2 * math.pi)

    cdf_a = _normal_cdf(a) if np.isfinite(low) else np.zeros_like(mean)
    cdf_b = _normal_cdf(b) if np.isfinite(high) else np.ones_like(mean)
    pdf_a = pdf(a) if np.isfinite(low) else 0.0
    pdf_b = pdf(b) if np.isfinite(high) else 0.0
    inside = mean * (cdf_b - cdf_a) + std * (pdf_a - pdf_b)
    return (inside + (low * cdf_a if np.isfinite(low) else 0.0)
            + (high * (1 - cdf_b) if np.isfinite(high) else 0.0))


def analytic_input_mean(value: ir.Value) -> np.ndarray | None:
    """E[x] per channel of a layer input, from the upstream layer's BatchNorm statistics.

    Follows at most one Relu/Clip; None when the upstream layer has no statistics.
    """
    producer = value.producer()
    low, high = -math.inf, math.inf
    if producer is not None and producer.op_type in ("Relu", "Clip"):
        low, high = clip_bounds(producer)
        producer = producer.inputs[0].producer()
    if producer is None or BN_STATS not in producer.meta:
        return None
    mean, std = producer.meta[BN_STATS]
    return clipped_normal_mean(mean, std, low, high)


def _rounding_error(initializers, plan: QuantPlan, weight_qparams: dict[str, QParams],
                    bias_name: str) -> np.ndarray | None:
    """Q(W) - W of the weight that goes with ``bias_name``, as float64."""
    weight = plan.biases[bias_name].weight
    spec = plan.weights.get(weight)
    if spec is None or weight not in weight_qparams:
        return None
    w = initializers[weight].const_value.numpy()
    params = weight_qparams[weight]
    q = fake_quantize(w, params.scale, params.zero_point, QTYPES[spec.qtype], params.axis)
    return q.astype(np.float64) - w


class AnalyticBiasCorrectionPass(ir.passes.InPlacePass):
    """Data-free bias correction: ``b -= (Q(W) - W) E[x]`` with E[x] from BatchNorm statistics.

    Changes: float bias initializers of planned Conv/ConvTranspose/Gemm layers
    whose input comes (through at most one Relu/Clip) from a layer that had a
    BatchNorm folded in by FuseBatchNormPass; E[x] is the mean of the clipped
    normal N(beta, gamma^2) (Nagel et al. 2019, analytic form).  Needs no data.
    """

    def __init__(self, plan: QuantPlan, weight_qparams: dict[str, QParams]):
        super().__init__()
        self.plan = plan
        self.weight_qparams = weight_qparams

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        corrected = 0
        values = model.graph.initializers
        for bias_name in self.plan.biases:
            value = values.get(bias_name)
            if value is None:
                continue
            node = _layer(value)
            mean = analytic_input_mean(node.inputs[0])
            delta = _rounding_error(values, self.plan, self.weight_qparams, bias_name)
            if mean is None or delta is None:
                continue
            shift = _output_shift(node, delta, mean)
            if shift is None or shift.shape != value.const_value.shape:
                continue
            _set_bias(value, value.const_value.numpy().astype(np.float64) - shift)
            corrected += 1
        logger.info("analytic bias correction: %d layers", corrected)
        return ir.passes.PassResult(model, corrected > 0)


class EmpiricalBiasCorrectionPass(ir.passes.InPlacePass):
    """Bias correction on the quantized network: ``b = b0 - (Q(W) - W) E[x_q]``.

    Changes: float bias initializers of planned Conv/ConvTranspose/Gemm layers.
    ``measure(model)`` returns the per-channel mean of each planned layer input
    as the quantized network computes it (every upstream layer quantized, with the
    biases as they stand), keyed by the input's name.  Each sweep re-measures with
    the corrected upstream and recomputes every correction from the original bias,
    so the sweeps converge to the layer-by-layer result (each layer corrected for
    its own rounding error on the input it really sees); they stop once the largest
    bias change is below ``tolerance`` of that bias's scale.  Memory: per-channel
    means only (``measure`` streams the data).
    """

    def __init__(self, plan: QuantPlan, weight_qparams: dict[str, QParams],
                 measure: Callable[[ir.Model], dict[str, np.ndarray]], sweeps: int = 2,
                 tolerance: float = 1e-3):
        super().__init__()
        self.plan = plan
        self.weight_qparams = weight_qparams
        self.measure = measure
        self.sweeps = sweeps
        self.tolerance = tolerance
        self.changes: list[float] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        initializers = model.graph.initializers
        original = {name: initializers[name].const_value.numpy().astype(np.float64)
                    for name in self.plan.biases if name in initializers}
        deltas = {name: _rounding_error(initializers, self.plan, self.weight_qparams, name)
                  for name in original}
        if not original:
            return ir.passes.PassResult(model, False)
        for _ in range(self.sweeps):
            means = self.measure(model)
            largest = 0.0
            for name, bias in original.items():
                value = initializers[name]
                mean = means.get(self.plan.biases[name].activation)
                shift = None if mean is None or deltas[name] is None else _output_shift(
                    _layer(value), deltas[name], mean.astype(np.float64))
                if shift is None or shift.shape != bias.shape:
                    continue
                new = bias - shift
                scale = np.abs(bias).max() + np.abs(shift).max() + 1e-12
                largest = max(largest, float(np.abs(new - value.const_value.numpy()).max()
                                             / scale))
                _set_bias(value, new)
            self.changes.append(largest)
            logger.info("bias correction sweep %d: largest bias change %.3g", len(self.changes),
                        largest)
            if largest < self.tolerance:
                break
        return ir.passes.PassResult(model, bool(original))
