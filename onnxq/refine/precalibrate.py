"""Calibration-free weight pre-calibration: KL-matched scales, mean-preserving rounding."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxq.io.mapped import release_pages
from onnxq.numerics.affine import (
    QTYPES,
    QType,
    choose_qparams,
    from_groups,
    groups,
    mean_preserving_round,
    ungroup,
)
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)

RATIOS = np.linspace(1.0, 0.7, 7)
FINE_BINS = 64
MIN_ROW = 64
"""Rows with fewer weights (depthwise kernels) keep min-max: their histogram says too little."""


def _kl_to_grid(rows: np.ndarray, amax: np.ndarray, scale: np.ndarray, grid: QType
                ) -> np.ndarray:
    """KL(P || Q) per row: P the weights' histogram, Q its quantized version spread per cell."""
    edges = np.linspace(-1.0, 1.0, FINE_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    out = np.empty(rows.shape[0])
    for i, (row, top, step) in enumerate(zip(rows, amax, scale, strict=True)):
        p, _ = np.histogram(row / top, bins=edges)
        p = p / max(p.sum(), 1) + 1e-12
        cell = np.clip(np.round(centres * top / step), grid.qmin + 1, grid.qmax)
        index = (cell - cell.min()).astype(int)
        q = (np.bincount(index, weights=p) / np.bincount(index))[index]
        out[i] = float(np.sum(p * np.log(p / (q + 1e-12))))
    return out


def kl_scales(rows: np.ndarray, grid: QType) -> np.ndarray:
    """Per-row symmetric scale whose quantization keeps the weight histogram closest (KL)."""
    amax = np.maximum(np.abs(rows).max(axis=1), 1e-12)
    if rows.shape[1] < MIN_ROW:
        return choose_qparams(-amax, amax, grid, symmetric=True)[0]
    best, best_kl = None, None
    for ratio in RATIOS:
        scale, _ = choose_qparams(-amax * ratio, amax * ratio, grid, symmetric=True)
        kl = _kl_to_grid(rows, amax, scale.astype(np.float64), grid)
        if best is None:
            best, best_kl = scale.copy(), kl
        else:
            better = kl < best_kl
            best = np.where(better, scale, best)
            best_kl = np.where(better, kl, best_kl)
    return best.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Rounded:
    """The grid values of weight ``source`` under per-row ``scale`` and ``zero`` (rows of
    ``groups``), rounded to keep each row's mean; called, it computes them."""

    name: str
    source: ir.TensorProtocol
    qtype: str
    axis: int | None
    block_size: int | None
    scale: np.ndarray
    zero: np.ndarray

    def __call__(self) -> ir.Tensor:
        w = self.source.numpy().astype(np.float64)
        release_pages(self.source)
        rows, _ = groups(w, self.axis, self.block_size)
        q = mean_preserving_round(rows, self.scale, self.zero, QTYPES[self.qtype])
        values = from_groups((q - self.zero[:, None]) * self.scale[:, None], w.shape,
                             self.axis, self.block_size)
        return ir.tensor(values.astype(np.float32), name=self.name)


class PreCalibrateWeightsPass(ir.passes.InPlacePass):
    """Data-free weight pre-calibration after AdpQ (arXiv 2501.09107): keep the distribution.

    Changes: for every planned weight, the per-channel scale becomes the clipping whose
    quantized histogram is closest (KL divergence) to the weights' own, written into
    ``weight_qparams`` (block-wise weights keep their resolved scales and zero points: a
    block of 32-128 weights has too few for a histogram); the weight initializer is replaced
    by its grid values, rounded to nearest and then flipped at the weights nearest the
    rounding boundary so every channel or block keeps its sum (mean); a weight read from
    external data is replaced by a lazy tensor that computes them when read (emission), so
    no float copy of a large model is held.  Needs no calibration data.
    """

    def __init__(self, plan: QuantPlan, weight_qparams: dict[str, QParams]):
        super().__init__()
        self.plan = plan
        self.weight_qparams = weight_qparams

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        initializers = model.graph.initializers
        for name, spec in self.plan.weights.items():
            source = initializers[name].const_value
            old = self.weight_qparams[name]
            if spec.block_size:  # per-block qparams as one value per row of ``groups``
                scale = groups(old.scale, spec.axis, 1)[0].reshape(-1).astype(np.float64)
                zero = groups(old.zero_point, spec.axis, 1)[0].reshape(-1)
                shape = old.scale.shape
            else:
                rows, shape = groups(source.numpy().astype(np.float64), spec.axis, None)
                release_pages(source)
                scale = kl_scales(rows, QTYPES[spec.qtype]).astype(np.float64)
                zero = np.zeros(len(rows), np.int64)
            rounded = _Rounded(name, source, spec.qtype, spec.axis, spec.block_size, scale, zero)
            initializers[name].const_value = (  # weights on disk stay there until emission
                ir.LazyTensor(rounded, ir.DataType.FLOAT, source.shape, name=name)
                if isinstance(source, ir.ExternalTensor) else rounded())
            self.weight_qparams[name] = QParams(
                ungroup(scale.astype(np.float32), shape, spec.axis, spec.block_size),
                old.zero_point, old.qtype, old.axis, old.block_size)
        logger.info("pre-calibrated %d weights", len(self.plan.weights))
        return ir.passes.PassResult(model, bool(self.plan.weights))
