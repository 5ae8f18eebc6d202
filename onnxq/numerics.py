"""The one numeric core: quantization grids, qparam choice, quantize and dequantize (numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir


@dataclasses.dataclass(frozen=True)
class QType:
    """An integer grid: ONNX element type and its representable range."""

    name: str
    dtype: ir.DataType
    qmin: int
    qmax: int
    min_opset: int

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
}


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


def _broadcast(param: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QType,
             axis: int | None = None) -> np.ndarray:
    """Round-to-nearest-even quantization of ``x`` (ONNX QuantizeLinear semantics)."""
    s = _broadcast(np.asarray(scale, np.float32), x.ndim, axis)
    z = _broadcast(np.asarray(zero_point, np.int64), x.ndim, axis)
    q = np.round(x.astype(np.float32) / s) + z
    return np.clip(q, qtype.qmin, qtype.qmax).astype(np.int64)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
               axis: int | None = None) -> np.ndarray:
    """Map integers back to float32 (ONNX DequantizeLinear semantics)."""
    s = _broadcast(np.asarray(scale, np.float32), q.ndim, axis)
    z = _broadcast(np.asarray(zero_point, np.int64), q.ndim, axis)
    return ((q.astype(np.int64) - z) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QType,
                  axis: int | None = None) -> np.ndarray:
    """Quantize then dequantize ``x``."""
    return dequantize(quantize(x, scale, zero_point, qtype, axis), scale, zero_point, axis)


def channel_ranges(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (or whole-tensor when axis is None) min and max of ``w``."""
    if axis is None:
        return np.asarray(w.min()), np.asarray(w.max())
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return moved.min(axis=1), moved.max(axis=1)


def mse_weight_ranges(w: np.ndarray, axis: int | None, qtype: QType,
                      grid: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric clipping ranges minimizing the weights' rounding MSE."""
    lo, hi = channel_ranges(w, axis)
    amax = np.maximum(-lo, hi).astype(np.float64)
    moved = w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    best_err = np.full(amax.shape, np.inf)
    best = amax.copy()
    for ratio in np.linspace(1.0, 0.3, grid):
        scale, zp = choose_qparams(-amax * ratio, amax * ratio, qtype, symmetric=True)
        err = ((fake_quantize(moved, scale.reshape(-1), zp.reshape(-1), qtype, 0) - moved) ** 2)
        err = err.mean(axis=1).reshape(amax.shape)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, amax * ratio, best)
    return -best, best


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = float(np.sum((reference.astype(np.float64) - approx) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)
