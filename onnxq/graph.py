"""Small look-ups over an onnx_ir graph shared by calibration and emission."""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import onnx_ir as ir


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every run-time tensor of ``graph`` (graph inputs and node outputs) by name."""
    values = {value.name: value for value in graph.inputs}
    values.update({value.name: value for node in graph for value in node.outputs})
    return values


def model_values(model: ir.Model) -> dict[str, ir.Value]:
    """Every run-time tensor of the model, subgraphs (If/Loop/Scan bodies) included."""
    values: dict[str, ir.Value] = {}
    for graph in model.graphs():
        values.update(values_by_name(graph))
    return values


class FreshNames:
    """Fresh names: ``base`` unless the model already uses it, else ``base_1``, ``base_2``..."""

    def __init__(self, model: ir.Model):
        self.taken: set[str] = set()
        for graph in model.graphs():
            self.taken.update(v.name for v in [*graph.inputs, *graph.initializers.values()]
                              if v.name)
            for node in graph:
                self.taken.update(out.name for out in node.outputs if out.name)
                if node.name:
                    self.taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def subgraph_owners(model: ir.Model) -> dict[int, tuple[ir.Node, str]]:
    """id(subgraph) -> (the node holding it, the attribute name)."""
    owners = {}
    for graph in model.graphs():
        for node in graph:
            for name, attr in node.attributes.items():
                if attr.type == ir.AttributeType.GRAPH:
                    owners[id(attr.value)] = (node, name)
    return owners


def expose(model: ir.Model, value: ir.Value, names: FreshNames,
           owners: dict[int, tuple[ir.Node, str]]) -> tuple[ir.Value, int]:
    """Make a value of a subgraph readable as a main-graph value (for calibration copies).

    The value becomes an extra output of its body and of the node holding the body, level
    by level: an If output (the branch not taken gives an empty tensor), or a scan output of
    a Loop/Scan, stacked over iterations.  Returns the main-graph value and the number of
    stacked leading dims to merge into the batch dim.  ``owners`` is
    :func:`subgraph_owners` of ``model`` (exposing adds no body, so one map serves all).
    """
    stacked = 0
    while value.graph is not None and value.graph is not model.graph:
        graph = value.graph
        node, attr = owners[id(graph)]
        copy = ir.node("Identity", [value], name=names(f"{value.name}_exposed"))
        copy.outputs[0].name = names(f"{value.name}_exposed")
        copy.outputs[0].dtype = value.dtype
        graph.append(copy)
        graph.outputs.append(copy.outputs[0])
        if node.op_type == "If":
            other = node.attributes["else_branch" if attr == "then_branch" else
                                    "then_branch"].value
            empty = ir.node("Constant", [], attributes={"value": ir.tensor(
                np.zeros(0, value.dtype.numpy() if value.dtype else np.float32))},
                name=names(f"{value.name}_not_taken"))
            empty.outputs[0].name = names(f"{value.name}_not_taken")
            other.append(empty)
            other.outputs.append(empty.outputs[0])
        else:  # Loop and Scan: appended body outputs are scan outputs
            stacked += 1
            for key in ("scan_output_axes", "scan_output_directions"):
                if key in node.attributes:
                    node.attributes[key] = ir.AttrInt64s(
                        key, [*node.attributes[key].value, 0])
        node.resize_outputs(len(node.outputs) + 1)
        value = node.outputs[-1]
        value.name = names(f"{copy.outputs[0].name}_out")
    return value, stacked


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


def fused_chain_end(value: ir.Value, fused: Collection[str]) -> ir.Value:
    """``value``, or the output of the ``fused`` activations that alone read it, one after
    the other (the Q of a Conv -> Relu unit goes after the Relu)."""
    while True:
        readers = list(value.uses())
        if (len(readers) != 1 or value.is_graph_output() or readers[0][0].op_type not in fused
                or not readers[0][0].outputs):
            return value
        value = readers[0][0].outputs[0]
