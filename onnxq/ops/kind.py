"""``LayerKind``: what onnxq knows about an op that carries a weight, in one record."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np
import onnx_ir as ir


class Annotates(Protocol):
    """What a layer's annotation rule asks of the annotator (``onnxq.plan.annotate``)."""

    def activation(self, node: ir.Node, index: int) -> bool: ...
    def weight(self, node: ir.Node, index: int, axis: int | None) -> bool: ...
    def bias(self, node: ir.Node, index: int, act_index: int, weight_index: int) -> None: ...
    def keep_float(self, node: ir.Node, reason: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """One op with a weight: the weight's output-channel axis, the output's channel axis,
    how bias correction shifts its output, and how annotation quantizes it by default."""

    op_type: str
    weight_axis: Callable[[ir.Node, int], int | None]
    """The weight's per-channel (output-channel) axis, given the weight's rank."""
    output_channel_axis: int
    """The output tensor's channel axis (1 for convolutions, -1 for Gemm and MatMul)."""
    annotate: Callable[[Annotates, ir.Node], None]
    """The default rule: which inputs are quantized, per channel on ``weight_axis``."""
    output_shift: Callable[[ir.Node, np.ndarray, np.ndarray], np.ndarray | None] = (
        lambda node, delta, mean: None)
    """E[(Q(W) - W) x] per output channel from the weight error ``delta`` and the input's
    per-channel mean (None: bias correction does not apply)."""

    def out_first(self, node: ir.Node, weight: np.ndarray) -> np.ndarray:
        """``weight`` with its output-channel axis first (a view)."""
        axis = self.weight_axis(node, weight.ndim)
        return weight if axis in (None, 0) else np.moveaxis(weight, axis, 0)

    def per_output_channel(self, node: ir.Node, values: np.ndarray, rank: int) -> np.ndarray:
        """``values`` (one per output channel) shaped to broadcast against the weight."""
        axis = self.weight_axis(node, rank) or 0
        shape = [1] * rank
        shape[axis] = -1
        return values.reshape(shape)
