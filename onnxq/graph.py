"""Small look-ups over an onnx_ir graph shared by calibration and emission."""

from __future__ import annotations

import onnx_ir as ir


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every run-time tensor of ``graph`` (graph inputs and node outputs) by name."""
    values = {value.name: value for value in graph.inputs}
    values.update({value.name: value for node in graph for value in node.outputs})
    return values
