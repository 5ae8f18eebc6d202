"""MatMul: a constant right operand [..., K, N] is a weight, per channel on its last axis;
two run-time operands are two activations."""

from __future__ import annotations

import onnx_ir as ir

from onnxq.ops.kind import Annotates, LayerKind


def _annotate(a: Annotates, node: ir.Node) -> None:
    a.activation(node, 0)
    weight = node.inputs[1]
    if weight is not None and weight.const_value is not None:
        a.weight(node, 1, len(weight.const_value.shape) - 1)
    else:
        a.activation(node, 1)


KINDS = {"MatMul": LayerKind("MatMul", lambda node, rank: rank - 1, -1, _annotate)}
