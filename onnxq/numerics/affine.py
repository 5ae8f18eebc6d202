"""The one numeric core: quantization grids, qparam choice, quantize and dequantize (numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir


@dataclasses.dataclass(frozen=True)
class QType:
    """A grid: ONNX element type and its representable range; an integer grid unless
    ``levels`` lists its values (a float type's, in units of the scale)."""

    name: str
    dtype: ir.DataType
    qmin: int
    qmax: int
    min_opset: int
    levels: tuple[float, ...] | None = None

    @property
    def signed(self) -> bool:
        """Whether the grid holds negative integers."""
        return self.qmin < 0

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype that stores values of this grid."""
        return self.dtype.numpy()


QTYPES: dict[str, QType] = {
    "uint8": QType("uint8", ir.DataType.UINT8, 0, 255, 13),
    "int8": QType("int8", ir.DataType.INT8, -128, 127, 13),
    "uint16": QType("uint16", ir.DataType.UINT16, 0, 65535, 21),
    "int16": QType("int16", ir.DataType.INT16, -32768, 32767, 21),
    "int4": QType("int4", ir.DataType.INT4, -8, 7, 21),
    "uint4": QType("uint4", ir.DataType.UINT4, 0, 15, 21),
    "int32": QType("int32", ir.DataType.INT32, -(2**31), 2**31 - 1, 13),
    "fp4": QType("fp4", ir.DataType.FLOAT4E2M1, -6, 6, 23, levels=tuple(
        sign * v for sign in (-1, 1) for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6))),
}
"""``fp4`` is E2M1 (OCP MX, NVFP4's element type): the non-uniform grid 0, 0.5, 1, 1.5, 2, 3,
4, 6 and their negatives, denser near 0 where weights are."""

WIDE = {"uint8": "uint16", "int8": "int16", "uint4": "uint16", "int4": "int16"}
"""The 16-bit grid each activation type moves to (``--min-sqnr``)."""


def choose_qparams(lo: np.ndarray | float, hi: np.ndarray | float, qtype: QType,
                   symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point mapping ``[lo, hi]`` (widened to hold 0) onto ``qtype``.

    Symmetric grids use the narrow range (e.g. -127..127 for int8) so that
    ``-x`` and ``x`` round alike; unsigned symmetric grids centre the zero point.
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if symmetric:
        amax = np.maximum(-lo, hi)
        half = (qtype.qmax - qtype.qmin) // 2
        scale = amax / half
        zero_point = np.full(scale.shape, 0 if qtype.signed else half + 1, np.int64)
    else:
        scale = (hi - lo) / (qtype.qmax - qtype.qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero_point = np.clip(np.round(qtype.qmin - lo / safe), qtype.qmin, qtype.qmax)
        zero_point = zero_point.astype(np.int64)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return scale, zero_point


def expand_blocks(param: np.ndarray, axis: int, block_size: int, size: int) -> np.ndarray:
    """Block-wise qparams (``param.shape[axis] == ceil(size / block_size)``) repeated to one
    entry per element along ``axis`` (ONNX's blocked Q/DQ layout)."""
    return np.repeat(param, block_size, axis=axis).take(np.arange(size), axis=axis)


def _broadcast(param: np.ndarray, shape: tuple[int, ...], axis: int | None,
               block_size: int | None = None) -> np.ndarray:
    """``param`` (per tensor, per channel along ``axis``, or per block of ``block_size``
    along ``axis``) shaped to broadcast against a tensor of ``shape``."""
    if axis is None or param.ndim == 0:
        return param
    if block_size:
        return expand_blocks(param.reshape([-1 if a == axis else n for a, n in
                                            enumerate(shape)]), axis, block_size, shape[axis])
    view = [1] * len(shape)
    view[axis] = -1
    return param.reshape(view)


def per_element(param: np.ndarray, shape: tuple[int, ...], axis: int | None,
                block_size: int | None = None) -> np.ndarray:
    """``param`` (per tensor, channel or block) repeated to one entry per element of a
    tensor of ``shape`` (a read-only view where it can be)."""
    return np.broadcast_to(_broadcast(np.asarray(param), shape, axis, block_size), shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QType,
             axis: int | None = None, block_size: int | None = None) -> np.ndarray:
    """Round-to-nearest-even quantization of ``x`` (ONNX QuantizeLinear semantics): integers,
    or on a float grid (zero point 0) its values as float32."""
    s = _broadcast(np.asarray(scale, np.float32), x.shape, axis, block_size)
    if qtype.levels is not None:  # saturating cast, nearest-even on the grid's mantissa
        q = np.clip(x.astype(np.float32) / s, qtype.qmin, qtype.qmax)
        return q.astype(qtype.numpy_dtype).astype(np.float32)
    z = _broadcast(np.asarray(zero_point, np.int64), x.shape, axis, block_size)
    q = np.round(x.astype(np.float32) / s) + z
    return np.clip(q, qtype.qmin, qtype.qmax).astype(np.int64)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
               axis: int | None = None, block_size: int | None = None) -> np.ndarray:
    """Map grid values (integers, or a float grid's) back to float32 (ONNX DequantizeLinear
    semantics)."""
    s = _broadcast(np.asarray(scale, np.float32), q.shape, axis, block_size)
    z = _broadcast(np.asarray(zero_point, np.int64), q.shape, axis, block_size)
    return ((q.astype(np.float64) - z) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QType,
                  axis: int | None = None, block_size: int | None = None) -> np.ndarray:
    """Quantize then dequantize ``x``."""
    return dequantize(quantize(x, scale, zero_point, qtype, axis, block_size), scale,
                      zero_point, axis, block_size)


def groups(w: np.ndarray, axis: int | None, block_size: int | None = None
           ) -> tuple[np.ndarray, tuple[int, ...]]:
    """``w`` as rows of the elements that share one scale, and the shape of the qparams:
    one row (shape ``()``) per tensor, one per channel along ``axis`` (``(C,)``), or one per
    block of ``block_size`` along ``axis`` (``w``'s shape with ``ceil(n / block_size)`` on
    ``axis``; a last partial block is padded with zeros, which every range holds)."""
    if axis is None:
        return w.reshape(1, -1), ()
    if not block_size:
        return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1), (w.shape[axis],)
    moved = np.moveaxis(w, axis, -1)
    count = -(-w.shape[axis] // block_size)
    padded = np.zeros((*moved.shape[:-1], count * block_size), w.dtype)
    padded[..., :w.shape[axis]] = moved
    rows = padded.reshape(-1, block_size)
    shape = [count if a == axis else n for a, n in enumerate(w.shape)]
    return rows, tuple(shape)


def from_groups(rows: np.ndarray, shape: tuple[int, ...], axis: int | None,
                block_size: int | None = None) -> np.ndarray:
    """The tensor of ``shape`` whose ``groups`` are ``rows`` (a last block's padding
    dropped): the inverse of ``groups``."""
    if axis is None:
        return rows.reshape(shape)
    moved = [shape[axis], *(n for a, n in enumerate(shape) if a != axis)]
    if not block_size:
        return np.moveaxis(rows.reshape(moved), 0, axis)
    padded = rows.reshape(*moved[1:], -1)[..., :shape[axis]]
    return np.moveaxis(padded, -1, axis)


def ungroup(per_row: np.ndarray, shape: tuple[int, ...], axis: int | None,
             block_size: int | None) -> np.ndarray:
    """Per-row values of ``groups`` (one per tensor, channel or block) in the qparams'
    shape."""
    if not block_size or axis is None:
        return per_row.reshape(shape)
    moved = [n for a, n in enumerate(shape) if a != axis] + [shape[axis]]
    return np.moveaxis(per_row.reshape(moved), -1, axis)


def channel_ranges(w: np.ndarray, axis: int | None, block_size: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of ``w`` per tensor (``axis`` None), per channel, or per block."""
    if axis is None:
        return np.asarray(w.min()), np.asarray(w.max())
    rows, shape = groups(w, axis, block_size)
    return (ungroup(rows.min(axis=1), shape, axis, block_size),
            ungroup(rows.max(axis=1), shape, axis, block_size))


def mse_weight_ranges(w: np.ndarray, axis: int | None, qtype: QType, grid: int = 80,
                      block_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric clipping ranges (per tensor, channel or block) minimizing the weights'
    rounding MSE."""
    rows, shape = groups(w, axis, block_size)
    amax = np.maximum(-rows.min(axis=1), rows.max(axis=1)).astype(np.float64)
    best_err = np.full(amax.shape, np.inf)
    best = amax.copy()
    for ratio in np.linspace(1.0, 0.3, grid):
        scale, zp = choose_qparams(-amax * ratio, amax * ratio, qtype, symmetric=True)
        err = ((fake_quantize(rows, scale, zp, qtype, 0) - rows) ** 2).mean(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, amax * ratio, best)
    best = ungroup(best, shape, axis, block_size)
    return -best, best


BLOCK_RATIOS = np.linspace(1.0, 0.5, 26)
"""Shrink ratios the MSE search of block scales tries (1: the block's extreme on the grid)."""


def signed_block_scales(w: np.ndarray, axis: int, block_size: int, qtype: QType,
                        ratios: np.ndarray = BLOCK_RATIOS) -> np.ndarray:
    """Symmetric per-block scales, each the least rounding error (MSE) in its block among
    two starts shrunk by ``ratios``: the block's largest-magnitude value on the grid's
    longer end (``qmin``: a negative scale where that value is positive; 8 int4 levels on
    its side, as ORT's block quantizer does, clipping the other side at 7/8 of it) and on
    ``qmax`` (no clipping).  In the qparams' shape."""
    rows, shape = groups(w, axis, block_size)
    extreme = rows[np.arange(len(rows)), np.abs(rows).argmax(axis=1)].astype(np.float64)
    extreme = np.where(extreme == 0, 1.0, extreme)
    starts = (extreme / qtype.qmin, np.abs(extreme) / qtype.qmax)
    best_err, best = np.full(len(rows), np.inf), starts[0]
    for start in starts:
        for ratio in ratios:
            scale = start * ratio
            err = ((fake_quantize(rows, scale, np.zeros_like(scale, np.int64), qtype, 0)
                    - rows) ** 2).sum(axis=1)
            better = err < best_err
            best_err, best = np.where(better, err, best_err), np.where(better, scale, best)
    return ungroup(best, shape, axis, block_size).astype(np.float32)


AFFINE_FITS = 4
"""Least-squares refits of each block's scale and zero point (gains stop after about 4)."""


def affine_block_qparams(w: np.ndarray, axis: int, block_size: int, qtype: QType,
                         fits: int = AFFINE_FITS) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric per-block scales and integer zero points (unsigned grids): the block's
    min-max, then ``fits`` rounds of refitting the step and offset that best map the rounded
    integers onto the block (least squares; the offset rounded to an integer zero point),
    each block keeping its least rounding error.  In the qparams' shape."""
    rows, shape = groups(w, axis, block_size)
    rows = rows.astype(np.float64)
    scale, zero = choose_qparams(rows.min(axis=1), rows.max(axis=1), qtype, symmetric=False)
    scale = scale.astype(np.float64)

    def fit(scale: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.clip(np.round(rows / scale[:, None]) + zero[:, None], qtype.qmin, qtype.qmax)
        return q, (((q - zero[:, None]) * scale[:, None] - rows) ** 2).sum(axis=1)

    q, best_err = fit(scale, zero)
    best_scale, best_zero = scale, zero
    for _ in range(fits):
        shifted = q - zero[:, None]
        norm = (shifted * shifted).sum(axis=1)
        refit = (shifted * rows).sum(axis=1) / np.where(norm > 0, norm, 1.0)
        scale = np.where((norm > 0) & (refit > 0), refit, scale)
        offset = (rows - scale[:, None] * q).mean(axis=1)
        zero = np.clip(np.round(-offset / scale), qtype.qmin, qtype.qmax)
        q, err = fit(scale, zero)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
    return (ungroup(best_scale, shape, axis, block_size).astype(np.float32),
            ungroup(best_zero, shape, axis, block_size).astype(np.int64))


ROUNDING_CHUNK = 2**20
"""Weights ``mean_preserving_round`` rounds at once (its temporaries are some 10 times that)."""


def mean_preserving_round(rows: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                          qtype: QType) -> np.ndarray:
    """Integers of ``rows`` (one scale and zero point per row): round-to-nearest, then the
    weights nearest the rounding boundary flipped the other way until each row's sum of
    rounding errors is at most half a step (the row's sum, so its mean, is kept).  Rows are
    independent: they are rounded a chunk at a time, which bounds the memory it takes."""
    step = max(1, ROUNDING_CHUNK // max(rows.shape[1], 1))
    return np.concatenate([
        _mean_preserving_chunk(rows[i:i + step], scale[i:i + step], zero_point[i:i + step],
                               qtype) for i in range(0, max(len(rows), 1), step)])


def _mean_preserving_chunk(rows: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                           qtype: QType) -> np.ndarray:
    x = rows / scale[:, None]
    q = np.clip(np.round(x) + zero_point[:, None], qtype.qmin, qtype.qmax)
    error = q - zero_point[:, None] - x
    total = error.sum(axis=1)
    flips, down = np.floor(np.abs(total) + 0.5), total > 0
    cost = np.where(down[:, None], np.where(q > qtype.qmin, -error, np.inf),
                    np.where(q < qtype.qmax, error, np.inf))
    first = np.arange(rows.shape[1])[None, :] < flips[:, None]  # in cheapest-first order
    flip = np.zeros(q.shape, bool)
    np.put_along_axis(flip, np.argsort(cost, axis=1, kind="stable"), first, axis=1)
    flip &= np.isfinite(cost)
    return q - np.where(down, 1, -1)[:, None] * flip


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)
