"""Small look-ups over an onnx_ir graph shared by calibration and emission."""

from __future__ import annotations

import math

import onnx_ir as ir


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every run-time tensor of ``graph`` (graph inputs and node outputs) by name."""
    values = {value.name: value for value in graph.inputs}
    values.update({value.name: value for node in graph for value in node.outputs})
    return values


def clip_bounds(node: ir.Node) -> tuple[float, float]:
    """The constant (low, high) of a Relu or Clip node; an absent bound is -inf/inf."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    bounds = []
    for index, default in ((1, -math.inf), (2, math.inf)):
        value = node.inputs[index] if len(node.inputs) > index else None
        const = value.const_value if value is not None else None
        bounds.append(default if const is None else float(const.numpy().reshape(-1)[0]))
    return bounds[0], bounds[1]
