"""Cut a graph into reconstruction units: blocks between single-float-tensor cut points."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxq.spec import QuantPlan

FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclasses.dataclass
class Block:
    """Consecutive nodes (topological order) with the run-time tensors entering and leaving them.

    ``layers`` are the block's nodes whose weight is quantized (what reconstruction learns).
    """

    nodes: list[ir.Node]
    inputs: list[str]
    outputs: list[str]
    layers: list[ir.Node]

    @property
    def name(self) -> str:
        """A readable name: the first and last node."""
        return f"{self.nodes[0].name} .. {self.nodes[-1].name}"


def _runtime(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is None


def cut_blocks(graph: ir.Graph, plan: QuantPlan, min_layers: int = 1) -> list[Block]:
    """Split ``graph`` where exactly one float tensor is live, each block holding >= min_layers.

    A residual (MBConv) block or a transformer layer ends up as one block, since its skip
    connection keeps two float tensors live until the Add.  Integer tensors (token ids,
    shapes) may be live at a cut; they are carried as extra block inputs.
    """
    order = list(graph)
    last_use: dict[str, int] = {}
    for i, node in enumerate(order):
        for value in node.inputs:
            if _runtime(value):
                last_use[value.name] = i
    for value in graph.outputs:
        last_use[value.name] = len(order)
    values = {v.name: v for v in graph.inputs}
    live = {v.name for v in graph.inputs if v.name in last_use}
    blocks: list[Block] = []
    start = 0
    for i, node in enumerate(order):
        for value in node.outputs:
            values[value.name] = value
            if value.name in last_use:
                live.add(value.name)
        live = {name for name in live if last_use[name] > i}
        members = order[start:i + 1]
        layers = [n for n in members if len(n.inputs) > 1 and n.inputs[1] is not None
                  and n.inputs[1].name in plan.weights]
        float_live = [name for name in live if values[name].dtype in FLOATS]
        if (len(layers) >= min_layers and len(float_live) == 1) or i == len(order) - 1:
            produced = {v.name for n in members for v in n.outputs}
            inputs = list(dict.fromkeys(v.name for n in members for v in n.inputs
                                        if _runtime(v) and v.name not in produced))
            blocks.append(Block(members, inputs, sorted(live & produced | (
                {v.name for v in graph.outputs} & produced)), layers))
            start = i + 1
    return blocks
