"""Resolved quantization parameters: decided once, used by bias correction and emission."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxq.numerics import QTYPES, channel_ranges, choose_qparams, mse_weight_ranges
from onnxq.observers import MinMaxObserver
from onnxq.spec import QuantPlan


@dataclasses.dataclass(frozen=True)
class QParams:
    """Resolved scale and zero point of one quantized tensor."""

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: str
    axis: int | None = None


def weight_qparams(w: np.ndarray, qtype: str, axis: int | None, observer: str) -> QParams:
    """Symmetric (per-channel when ``axis`` is set) qparams for a weight tensor."""
    grid = QTYPES[qtype]
    if observer == "mse":
        lo, hi = mse_weight_ranges(w, axis, grid)
    else:
        lo, hi = channel_ranges(w, axis)
    scale, zp = choose_qparams(lo, hi, grid, symmetric=True)
    return QParams(scale, zp, qtype, axis)


def resolve_weights(model: ir.Model, plan: QuantPlan) -> dict[str, QParams]:
    """Qparams of every planned weight initializer."""
    initializers = model.graph.initializers
    return {name: weight_qparams(initializers[name].const_value.numpy(), spec.qtype, spec.axis,
                                 spec.observer)
            for name, spec in plan.weights.items()}


def resolve_activations(plan: QuantPlan, observers: dict[str, MinMaxObserver]
                        ) -> dict[str, QParams]:
    """Scale/zero point for every planned activation, shared within groups."""
    resolved: dict[str, QParams] = {}
    for root, members in plan.groups().items():
        observer = observers.get(root)
        if observer is None or not observer.seen:
            continue
        spec = plan.activations[root]
        grid = QTYPES[spec.qtype]
        scale, zp = choose_qparams(*observer.range(grid, spec.symmetric), grid, spec.symmetric)
        for name in members:
            resolved[name] = QParams(scale, zp, spec.qtype)
    return resolved
