"""Reductions that drop their axes become ``keepdims=1`` and a Squeeze (exact)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.graph import FreshNames

REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"}


def _axes(node: ir.Node) -> np.ndarray | None:
    """The constant axes of a reduction (attribute before opset 18, input after), None when
    it reduces over every axis or its axes are computed at run time."""
    attribute = node.attributes.get_ints("axes", None)
    if attribute is not None:
        return np.array(attribute, np.int64)
    axes = node.inputs[1] if len(node.inputs) > 1 else None
    if axes is None or axes.const_value is None:
        return None
    return axes.const_value.numpy().astype(np.int64)


class KeepReducedDimsPass(ir.passes.InPlacePass):
    """Changes: every main-graph reduction with ``keepdims=0`` and constant axes gets
    ``keepdims=1`` and a Squeeze of those axes after it, which takes over its output's name
    and readers (the same values; for runtimes that mis-handle dims-dropping reductions
    between Q/DQ)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        names = FreshNames(model)
        graph = model.graph
        changed = False
        for node in list(graph):
            if (node.op_type not in REDUCTIONS or node.domain not in ("", "ai.onnx")
                    or node.attributes.get_int("keepdims", 1) != 0):
                continue
            axes = _axes(node)
            if axes is None:
                continue
            output = node.outputs[0]
            axes_name = names(f"{node.name}_squeeze_axes")
            axes_value = ir.Value(name=axes_name, const_value=ir.tensor(axes, name=axes_name))
            graph.register_initializer(axes_value)
            attributes = {name: attr.value for name, attr in node.attributes.items()}
            kept = ir.node(node.op_type, list(node.inputs), {**attributes, "keepdims": 1},
                           name=node.name, domain=node.domain)
            squeeze = ir.node("Squeeze", [kept.outputs[0], axes_value],
                              name=names(f"{node.name}_Squeeze"))
            name = output.name
            output.name = names(f"{name}_dropped")
            kept.outputs[0].name = names(f"{name}_kept")
            kept.outputs[0].dtype = output.dtype
            squeeze.outputs[0].name, squeeze.outputs[0].dtype = name, output.dtype
            squeeze.outputs[0].shape = output.shape
            output.replace_all_uses_with(squeeze.outputs[0], replace_graph_outputs=True)
            graph.insert_after(node, [kept, squeeze])
            graph.remove(node, safe=True)
            changed = True
        return ir.passes.PassResult(model, changed)
