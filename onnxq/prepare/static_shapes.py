"""Fix every dynamic input dim, for runtimes that compile static graphs (QNN HTP)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir

from onnxq.errors import OnnxqError


class FixInputShapesPass(ir.passes.InPlacePass):
    """Give the graph inputs the static ``shapes`` (input name -> dims).

    Changes: the input shapes, and the shapes of the other values and outputs that held a
    symbolic dim, which are dropped for shape inference to compute again.  A shape of
    another rank, a static dim that differs, or an unknown input name is an OnnxqError.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]]):
        super().__init__()
        self.shapes = {name: tuple(dims) for name, dims in shapes.items()}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inputs = {value.name: value for value in model.graph.inputs}
        unknown = sorted(set(self.shapes) - set(inputs))
        if unknown:
            raise OnnxqError(f"--input-shape names {unknown[0]!r}, which is no model input; "
                             f"the inputs are {', '.join(inputs)}")
        modified = False
        for name, dims in self.shapes.items():
            value = inputs[name]
            known = value.shape
            if known is not None and (len(known) != len(dims) or any(
                    isinstance(d, int) and d != n for d, n in zip(known, dims, strict=True))):
                raise OnnxqError(f"--input-shape {name}={'x'.join(map(str, dims))} does not "
                                 f"fit the model's input shape {list(known)}")
            if known is None or any(not isinstance(d, int) for d in known):
                value.shape = ir.Shape(dims)
                modified = True
        if modified:
            for graph in model.graphs():
                symbolic = [out for node in graph for out in node.outputs
                            if out.shape is not None
                            and any(not isinstance(d, int) for d in out.shape)]
                for value in symbolic:
                    value.shape = None
        return ir.passes.PassResult(model, modified)


def dynamic_inputs(model: ir.Model) -> list[str]:
    """The names of the graph inputs with a symbolic or unknown dim."""
    return [value.name for value in model.graph.inputs
            if value.shape is None or any(not isinstance(d, int) for d in value.shape)]
