"""Gemm: ``alpha * A @ op(B) + beta * C`` with a constant B ([N, K] under transB)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.ops.kind import Annotates, LayerKind


def _weight_axis(node: ir.Node, rank: int) -> int:
    return 0 if node.attributes.get_int("transB", 0) else 1


def _annotate(a: Annotates, node: ir.Node) -> None:
    """A and B quantized (B per output column); C as an int32 bias only when alpha and beta
    are 1 (the runtime's integer kernel has no scaling of them)."""
    alpha = node.attributes.get_float("alpha", 1.0)
    beta = node.attributes.get_float("beta", 1.0)
    if a.activation(node, 0) and a.weight(node, 1, _weight_axis(node, 2)):
        if alpha == 1.0 and beta == 1.0:
            a.bias(node, 2, 0, 1)
    else:
        a.activation(node, 1)


def _shift(node: ir.Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    if node.attributes.get_int("transA", 0):
        return None
    matrix = delta if node.attributes.get_int("transB", 0) else delta.T  # [N, K]
    return matrix @ mean


KINDS = {"Gemm": LayerKind("Gemm", _weight_axis, -1, _annotate, _shift)}
