"""Read symbolic dims (the batch size) from the tensor that needs them, not the graph input."""

from __future__ import annotations

import onnx_ir as ir

_SHAPE_ARITHMETIC = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Cast"}


def _gathered_axes(shape_node: ir.Node) -> list[int] | None:
    """The constant indices every consumer of ``Shape``'s output gathers, or None."""
    axes = []
    for user, index in shape_node.outputs[0].uses():
        indices = user.inputs[1].const_value if len(user.inputs) > 1 and user.inputs[1] else None
        if user.op_type != "Gather" or index != 0 or indices is None:
            return None
        axes += [int(i) for i in indices.numpy().reshape(-1)]
    return axes


def _reshapes_fed_by(value: ir.Value) -> set[ir.Node]:
    """Reshape nodes whose shape input is computed from ``value`` through shape arithmetic."""
    found, frontier = set(), [value]
    while frontier:
        for user, index in frontier.pop().uses():
            if user.op_type == "Reshape" and index == 1:
                found.add(user)
            elif user.op_type in _SHAPE_ARITHMETIC:
                frontier.extend(user.outputs)
            else:
                return {None}
    return found


class LocalizeShapePass(ir.passes.InPlacePass):
    """``Shape(graph input)`` feeding one Reshape's target shape reads that Reshape's input.

    Changes: the input of such Shape nodes, where every gathered dim is the same symbolic
    dim (e.g. ``batch``) in both tensors, so the value is unchanged.  The torch exporter's
    ``x.view(x.size(0), -1)`` otherwise keeps the model input alive until the classifier,
    which leaves no single-tensor point to cut the graph into reconstruction blocks.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "Shape" or node.inputs[0].shape is None:
                continue
            axes = _gathered_axes(node)
            reshapes = _reshapes_fed_by(node.outputs[0])
            if not axes or len(reshapes) != 1 or None in reshapes:
                continue
            target = next(iter(reshapes)).inputs[0]
            source = node.inputs[0]
            if target is source or target.shape is None:
                continue
            rank = min(len(source.shape), len(target.shape))
            same = all(0 <= a < rank and isinstance(source.shape[a], ir.SymbolicDim)
                       and source.shape[a] == target.shape[a] for a in axes)
            if same and node.attributes.get_int("start", 0) == 0:
                node.replace_input_with(0, target)
                modified = True
        if modified:
            model.graph.sort()
        return ir.passes.PassResult(model, modified)
