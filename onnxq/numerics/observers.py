"""Streaming activation observers: statistics are reduced batch by batch, never stored.

``minmax`` keeps two numbers.  ``percentile``, ``mse`` and ``entropy`` share a
histogram whose bins are anchored at zero with a power-of-two width: when data
falls outside, neighbouring bins merge exactly, so memory stays fixed whatever
the number of samples.
"""

from __future__ import annotations

import math

import numpy as np

from onnxq.numerics.affine import QType, choose_qparams

OBSERVERS = ("minmax", "percentile", "mse", "entropy")


def finite(x: np.ndarray) -> tuple[np.ndarray, int]:
    """The finite values of ``x`` (flattened when any are not) and how many were dropped."""
    mask = np.isfinite(x)
    if mask.all():
        return x, 0
    return x[mask], int(x.size - np.count_nonzero(mask))


class MinMaxObserver:
    """Running minimum and maximum of the finite values; ``nonfinite`` counts the others
    (inf/nan never widen a range)."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf
        self.nonfinite = 0

    def update(self, x: np.ndarray) -> None:
        """Fold one batch into the running range."""
        if not x.size:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # nan and inf show in min or max
            x, dropped = finite(x)
            self.nonfinite += dropped
            if not x.size:
                return
            lo, hi = float(x.min()), float(x.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    @property
    def seen(self) -> bool:
        """Whether any data arrived."""
        return self.lo <= self.hi

    def range(self, qtype: QType, symmetric: bool) -> tuple[float, float]:
        """The observed range."""
        return self.lo, self.hi


class HistogramObserver(MinMaxObserver):
    """A fixed-size streaming histogram; the range is chosen from it by ``method``."""

    def __init__(self, method: str = "mse", bins: int = 2048, percentile: float = 99.999):
        super().__init__()
        self.method, self.max_bins, self.percentile = method, bins, percentile
        self.width = 0.0
        self.first = 0  # index of counts[0]; bin i covers [i*width, (i+1)*width)
        self.counts = np.zeros(0, np.int64)

    def update(self, x: np.ndarray) -> None:
        """Fold one batch into the histogram, widening bins when the range grows."""
        x, dropped = finite(x.ravel())
        self.nonfinite += dropped
        if not x.size:
            return
        super().update(x)
        if self.width == 0.0:
            span = max(self.hi - self.lo, 1e-12)
            self.width = 2.0 ** math.ceil(math.log2(span / (self.max_bins // 2)))
            self.first = math.floor(self.lo / self.width)
            self.counts = np.zeros(self.max_bins, np.int64)
        self._fit()
        idx = np.floor(x / self.width).astype(np.int64) - self.first
        self.counts += np.bincount(idx, minlength=self.max_bins)[: self.max_bins]

    def _fit(self) -> None:
        """Widen bins (merging pairs exactly) and slide the window to cover [lo, hi]."""
        while math.floor(self.hi / self.width) - math.floor(self.lo / self.width) >= self.max_bins:
            merged = np.zeros(self.max_bins, np.int64)
            absolute = np.arange(self.max_bins) + self.first
            np.add.at(merged, absolute // 2 - self.first // 2, self.counts)
            self.counts, self.first, self.width = merged, self.first // 2, self.width * 2
        target = math.floor(self.lo / self.width)
        if target != self.first:
            moved = np.zeros(self.max_bins, np.int64)
            used = np.nonzero(self.counts)[0]
            moved[used + self.first - target] = self.counts[used]
            self.counts, self.first = moved, target

    def _centers(self) -> np.ndarray:
        return (np.arange(self.max_bins) + self.first + 0.5) * self.width

    def range(self, qtype: QType, symmetric: bool) -> tuple[float, float]:
        """The clipping range chosen by this observer's method."""
        if self.method == "percentile":
            return self._percentile_range()
        if self.method == "entropy":
            return self._entropy_range(qtype)
        return self._mse_range(qtype, symmetric)

    def _percentile_range(self) -> tuple[float, float]:
        cdf = np.cumsum(self.counts) / self.counts.sum()
        tail = (100.0 - self.percentile) / 100.0
        centers = self._centers()
        lo = centers[np.searchsorted(cdf, tail)] if self.lo < 0 else self.lo
        hi = centers[min(np.searchsorted(cdf, 1.0 - tail), self.max_bins - 1)]
        return max(self.lo, float(lo)), min(self.hi, float(hi))

    def _mse_range(self, qtype: QType, symmetric: bool, steps: int = 40) -> tuple[float, float]:
        centers, counts = self._centers(), self.counts.astype(np.float64)
        used = counts > 0
        centers, counts = centers[used], counts[used]
        ratios = np.linspace(1.0, 0.2, steps)
        best, best_err = (self.lo, self.hi), math.inf
        lo_ratios = ratios if self.lo < 0 else np.ones(1)
        for lo_r in lo_ratios:
            lo = np.full(steps, self.lo * lo_r)
            hi = self.hi * ratios
            scale, zp = choose_qparams(lo, hi, qtype, symmetric)
            q = np.clip(np.round(centers[None] / scale[:, None]) + zp[:, None],
                        qtype.qmin, qtype.qmax)
            err = ((q - zp[:, None]) * scale[:, None] - centers[None]) ** 2 @ counts
            err += (scale.astype(np.float64) ** 2 / 12.0) * counts.sum()
            i = int(np.argmin(err))
            if err[i] < best_err:
                best_err, best = float(err[i]), (float(lo[i]), float(hi[i]))
        return best

    def _entropy_range(self, qtype: QType) -> tuple[float, float]:
        """TensorRT-style KL threshold on |x| (symmetric) with ``qtype``'s level count."""
        centers = self._centers()
        edges = np.abs(centers)
        amax = max(abs(self.lo), abs(self.hi))
        nbins = 2048
        hist, _ = np.histogram(edges, bins=nbins, range=(0, amax), weights=self.counts)
        levels = (qtype.qmax - qtype.qmin + 1) // (1 if self.lo >= 0 else 2)
        best_kl, best_i = math.inf, nbins
        for i in range(levels, nbins + 1, max(1, nbins // 256)):
            p = hist[:i].copy()
            p[-1] += hist[i:].sum()
            chunks = np.array_split(hist[:i], levels)
            q = np.concatenate([
                np.where(c > 0, c.sum() / max(np.count_nonzero(c), 1), 0.0) for c in chunks])
            p_sum, q_sum = p.sum(), q.sum()
            if p_sum == 0 or q_sum == 0:
                continue
            p, q = p / p_sum, q / q_sum
            mask = p > 0
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
            if kl < best_kl:
                best_kl, best_i = kl, i
        threshold = best_i * amax / nbins
        return max(self.lo, -threshold), min(self.hi, threshold)


def make_observer(method: str) -> MinMaxObserver:
    """An observer for ``method`` (one of OBSERVERS)."""
    if method == "minmax":
        return MinMaxObserver()
    if method in OBSERVERS:
        return HistogramObserver(method)
    raise ValueError(f"unknown observer {method!r}; choose one of {', '.join(OBSERVERS)}")


class ChannelMeanObserver:
    """Running per-channel mean over every axis but ``axis`` (for bias correction)."""

    def __init__(self, axis: int = 1):
        self.axis = axis
        self.total: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        """Fold one batch into the running sums (an empty batch changes nothing)."""
        if not x.size:
            return
        axis = self.axis if x.ndim > 1 else 0
        others = tuple(i for i in range(x.ndim) if i != axis)
        sums = x.sum(axis=others, dtype=np.float64)  # no transposed float64 copy
        self.total = sums if self.total is None else self.total + sums
        self.count += x.size // x.shape[axis]

    @property
    def mean(self) -> np.ndarray:
        """The per-channel mean seen so far."""
        return (self.total / max(self.count, 1)).astype(np.float32)
