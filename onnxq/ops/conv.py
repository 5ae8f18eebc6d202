"""Conv and ConvTranspose: weights [O, I/g, k...] and [I, O/g, k...], channels on axis 1."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.ops.kind import Annotates, LayerKind


def _weight_axis(node: ir.Node, rank: int) -> int:
    return 1 if node.op_type == "ConvTranspose" else 0


def _annotate(a: Annotates, node: ir.Node) -> None:
    """Input and weight quantized (per output channel), int32 bias; with a run-time weight,
    both inputs as activations."""
    if a.activation(node, 0) and a.weight(node, 1, _weight_axis(node, 0)):
        a.bias(node, 2, 0, 1)
    else:
        a.activation(node, 1)


def _conv_shift(node: ir.Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    groups = node.attributes.get_int("group", 1)
    summed = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # [O, I/g]
    per_group = mean.reshape(groups, summed.shape[1])
    owner = np.arange(summed.shape[0]) // (summed.shape[0] // groups)
    return np.einsum("oi,oi->o", summed, per_group[owner])


def _conv_transpose_shift(node: ir.Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray:
    groups = node.attributes.get_int("group", 1)
    summed = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # [I, O/g]
    per_group = summed.reshape(groups, -1, summed.shape[1])
    shift = np.einsum("gij,gi->gj", per_group, mean.reshape(groups, -1)).reshape(-1)
    # each output pixel receives on average 1/prod(strides) of the kernel's taps
    return shift / np.prod(node.attributes.get_ints("strides", [1]))


KINDS = {
    "Conv": LayerKind("Conv", _weight_axis, 1, _annotate, _conv_shift),
    "ConvTranspose": LayerKind("ConvTranspose", _weight_axis, 1, _annotate,
                               _conv_transpose_shift),
}
