"""LSTM, GRU and RNN: W and R ([directions, gates x hidden, inputs]) int8 per gate row behind
DequantizeLinear, so the file shrinks; no runtime has a QDQ recurrent kernel, so the cell
computes in float."""

from __future__ import annotations

import onnx_ir as ir

from onnxq.ops.kind import Annotates, LayerKind


def _annotate(a: Annotates, node: ir.Node) -> None:
    stored = [a.weight(node, index, 1) for index in (1, 2) if len(node.inputs) > index]
    if any(stored):
        a.keep_float(node, f"{node.op_type}: int8 weights behind DequantizeLinear, computed "
                           "in float")


KINDS = {op: LayerKind(op, lambda node, rank: 1, -1, _annotate) for op in ("LSTM", "GRU", "RNN")}
