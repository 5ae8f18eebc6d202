"""Fold subgraphs whose inputs are all constant (e.g. the torch exporter's Pad-amount chains)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.optimizer import _constant_folding

# Folded tensors are weight-sized at most; bigger outputs stay as computed in the graph.
INPUT_SIZE_LIMIT = 1 << 20
OUTPUT_SIZE_LIMIT = 1 << 24


class FoldConstantsPass(ir.passes.InPlacePass):
    """Evaluate constant-only nodes and replace them by initializers.

    Changes: nodes such as Shape -> Gather -> Concat -> Pad-amount chains over
    static dims become constants, so later passes see plain Pad/Reshape with
    constant arguments.  Dynamic dims (e.g. the batch) are left alone.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inner = _constant_folding.FoldConstantsPass(
            shape_inference=True,
            input_size_limit=INPUT_SIZE_LIMIT,
            output_size_limit=OUTPUT_SIZE_LIMIT,
            should_fold=_should_fold,
        )
        result = inner(model)
        if result.modified:
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, result.modified)


def _should_fold(node: ir.Node) -> bool | None:
    """Also fold ConstantOfShape (skipped by onnxscript's defaults) when its output is small."""
    if node.op_type != "ConstantOfShape" or node.inputs[0].const_value is None:
        return None
    return int(np.prod(node.inputs[0].const_value.numpy())) <= OUTPUT_SIZE_LIMIT
