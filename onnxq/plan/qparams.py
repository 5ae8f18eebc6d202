"""Resolved quantization parameters: decided once, used by bias correction and emission."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxq.graph import model_values
from onnxq.io.mapped import release_pages
from onnxq.numerics.affine import (
    BLOCK_RATIOS,
    QTYPES,
    affine_block_qparams,
    channel_ranges,
    choose_qparams,
    mse_weight_ranges,
    signed_block_scales,
)
from onnxq.numerics.observers import MinMaxObserver
from onnxq.spec import QuantPlan


@dataclasses.dataclass(frozen=True)
class QParams:
    """Resolved scale and zero point of one quantized tensor."""

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: str
    axis: int | None = None
    block_size: int | None = None
    """Blocks of this many elements along ``axis`` (scale and zero point then have the
    tensor's rank, ``ceil(n / block_size)`` on ``axis``)."""

    def dequantize_mean(self, mean: np.ndarray) -> np.ndarray:
        """The real value of a mean of this tensor's integers (per-tensor qparams; affine,
        so the mean of the dequantized values)."""
        return ((mean.astype(np.float64) - float(self.zero_point.reshape(-1)[0]))
                * float(self.scale.reshape(-1)[0])).astype(np.float32)


def weight_qparams(w: np.ndarray, qtype: str, axis: int | None, observer: str,
                   block_size: int | None = None) -> QParams:
    """Qparams for a weight tensor: symmetric per tensor, per channel along ``axis``, or per
    block of ``block_size`` along ``axis`` (``signed_block_scales``: ``minmax`` compares the
    block's extreme on ``qmin`` and on ``qmax``, ``mse`` also shrinks them); unsigned blocks
    take least-squares fitted scales and zero points (``affine_block_qparams``)."""
    grid = QTYPES[qtype]
    if block_size and axis is not None and not grid.signed:
        return QParams(*affine_block_qparams(w, axis, block_size, grid), qtype, axis,
                       block_size)
    if block_size and axis is not None:
        scale = signed_block_scales(w, axis, block_size, grid,
                                    BLOCK_RATIOS if observer == "mse" else np.ones(1))
        return QParams(scale, np.zeros(scale.shape, np.int64), qtype, axis, block_size)
    if observer == "mse":
        lo, hi = mse_weight_ranges(w, axis, grid, block_size=block_size)
    else:
        lo, hi = channel_ranges(w, axis, block_size)
    scale, zp = choose_qparams(lo, hi, grid, symmetric=True)
    return QParams(scale, zp, qtype, axis, block_size)


def resolve_weights(model: ir.Model, plan: QuantPlan) -> dict[str, QParams]:
    """Qparams of every planned weight initializer."""
    initializers = model.graph.initializers
    resolved = {}
    for name, spec in plan.weights.items():
        tensor = initializers[name].const_value
        resolved[name] = weight_qparams(tensor.numpy(), spec.qtype, spec.axis, spec.observer,
                                        spec.block_size)
        release_pages(tensor)
    return resolved


def resolve_activations(plan: QuantPlan, observers: dict[str, MinMaxObserver],
                        retype: Mapping[str, str] | None = None) -> dict[str, QParams]:
    """Scale/zero point for every planned activation, shared within groups; ``retype`` maps
    a planned type to the one resolved instead (the 16-bit grids of ``--min-sqnr``)."""
    resolved: dict[str, QParams] = {}
    for root, members in plan.groups().items():
        observer = observers.get(root)
        if observer is None or not observer.seen:
            continue
        spec = plan.activations[root]
        qtype = (retype or {}).get(spec.qtype, spec.qtype)
        grid = QTYPES[qtype]
        scale, zp = choose_qparams(*observer.range(grid, spec.symmetric), grid, spec.symmetric)
        for name in members:
            resolved[name] = QParams(scale, zp, qtype)
    return resolved


def _set_by_producer(model: ir.Model, plan: QuantPlan, resolved: dict[str, QParams],
                     choose: Callable[[ir.Node, QParams], QParams | None]) -> int:
    """Give each group whose representative is a node's output the qparams ``choose``
    returns for that node and the group's resolved qparams (None: keep them), in
    ``resolved``; return how many groups changed."""
    values = model_values(model)
    changed = 0
    for root, members in plan.groups().items():
        producer = values[root].producer() if root in values else None
        params = resolved.get(root)
        chosen = choose(producer, params) if producer is not None and params else None
        if chosen is None:
            continue
        for name in members:
            resolved[name] = chosen
        changed += 1
    return changed


def fixed_qparams(model: ir.Model, plan: QuantPlan, resolved: dict[str, QParams],
                  fixed: Mapping[str, Mapping[str, Sequence[float]]]) -> int:
    """Give the groups whose representative is the output of an op with fixed output qparams
    for its type (``TargetProfile.fixed_qparams``) those qparams, in ``resolved``; return
    how many groups changed."""
    def choose(producer: ir.Node, params: QParams) -> QParams | None:
        scale_zp = fixed.get(producer.op_type, {}).get(params.qtype)
        grid = QTYPES[params.qtype]
        if scale_zp is None or not grid.qmin <= int(scale_zp[1]) <= grid.qmax:
            return None
        return QParams(np.array(scale_zp[0], np.float32), np.array(int(scale_zp[1]), np.int64),
                       params.qtype)

    return _set_by_producer(model, plan, resolved, choose)


def constant_source_qparams(model: ir.Model, plan: QuantPlan, resolved: dict[str, QParams],
                            weights: Mapping[str, QParams], moves: Collection[str]) -> int:
    """Give the groups whose representative is the output of a data-moving op (``moves``:
    Gather, Slice, Reshape, ...) on a per-tensor quantized constant of the same type that
    constant's qparams (the moved integers need no requantization; QNN HTP compiles a Gather
    only so); return how many groups changed."""
    def choose(producer: ir.Node, params: QParams) -> QParams | None:
        data = producer.inputs[0] if producer.inputs else None
        source = weights.get(data.name) if producer.op_type in moves and data else None
        if (source is None or source.axis is not None or source.block_size
                or source.qtype != params.qtype):
            return None
        return QParams(source.scale.reshape(()), source.zero_point.reshape(()), params.qtype)

    return _set_by_producer(model, plan, resolved, choose)


INT32_HEADROOM = 2.0 ** 30
"""The largest |bias / (s_input * s_weight)| kept: half of int32, room for bias correction."""


def fit_int32_biases(model: ir.Model, plan: QuantPlan, activations: dict[str, QParams],
                     weights: dict[str, QParams]) -> tuple[dict[str, QParams], dict[str, bool]]:
    """Weight qparams widened where an int32 bias would overflow (``s_w >= |b| / (s_in *
    2^30)`` per channel; ``weights`` is not changed), and for each widened weight whether
    the widening reached channels that did not need it (a scale shared across channels).

    Widening one channel's own scale costs nothing that matters: the weight rounding error
    it adds is at most ``fan_in * 255 / 2^31`` of that channel's bias, which dominates its
    output (the dead channels of trained CNNs: weights ~1e-9, biases ~1)."""
    fitted = dict(weights)
    widened: dict[str, bool] = {}
    for name, bias in plan.biases.items():
        act, weight = activations.get(bias.activation), fitted.get(bias.weight)
        value = model.graph.initializers.get(name)
        if act is None or weight is None or value is None or value.const_value is None:
            continue
        need = np.abs(value.const_value.numpy().astype(np.float64)) / (
            float(act.scale.reshape(-1)[0]) * INT32_HEADROOM)
        scale = weight.scale.astype(np.float64).reshape(-1)
        shared = scale.size != need.size
        if scale.size == 1:
            need = need.max(keepdims=True)
        elif shared:  # grouped ConvTranspose: scales repeat per group
            need = need.reshape(-1, scale.size).max(axis=0)
        if np.all(scale >= need):
            continue
        new = np.maximum(scale, need)
        widened[bias.weight] = widened.get(bias.weight, False) or shared
        fitted[bias.weight] = dataclasses.replace(
            weight, scale=new.astype(np.float32).reshape(weight.scale.shape))
    return fitted, widened
