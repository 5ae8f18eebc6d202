"""Gather on a constant 2-D table (an embedding): the table int8, one scale per column, and
emission moves the DequantizeLinear below the lookup (int8 Gather, then DQ of the gathered
rows), so the file shrinks and no run dequantizes the whole table."""

from __future__ import annotations

import onnx_ir as ir

from onnxq.ops.kind import Annotates, LayerKind


def _annotate(a: Annotates, node: ir.Node) -> None:
    """Rows (axis 0) gathered from a constant 2-D table: the table per column."""
    table = node.inputs[0]
    if (node.attributes.get_int("axis", 0) == 0 and table is not None
            and table.const_value is not None and len(table.const_value.shape) == 2):
        a.weight(node, 0, 1)


KINDS = {"Gather": LayerKind("Gather", lambda node, rank: rank - 1, -1, _annotate)}
