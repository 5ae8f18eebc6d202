"""Gemm weights stored transposed ([N, K], ``transB=1``) stored as [K, N] instead, the layout
ONNX Runtime's MatMulNBits fusion takes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


class UntransposeGemmWeightsPass(ir.passes.InPlacePass):
    """``Gemm(a, W, transB=1)`` with a constant rank-2 ``W`` that only it reads becomes
    ``Gemm(a, W.T, transB=0)``.

    Changes: the weight initializer's values and shape (transposed, same name) and the
    node's ``transB`` (exact in FP32).  Run before block-wise weights, whose blocks run
    along K and which ORT fuses only from a [K, N] weight.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if (node.op_type != "Gemm" or node.domain not in ("", "ai.onnx")
                    or not node.attributes.get_int("transB", 0) or len(node.inputs) < 2):
                continue
            weight = node.inputs[1]
            if (weight is None or not weight.is_initializer() or weight.const_value is None
                    or len(weight.const_value.shape) != 2 or len(weight.uses()) != 1):
                continue
            values = np.ascontiguousarray(weight.const_value.numpy().T)
            weight.const_value = ir.tensor(values, name=weight.name)
            weight.shape = ir.Shape(values.shape)
            node.attributes["transB"] = ir.AttrInt64("transB", 0)
            modified = True
        return ir.passes.PassResult(model, modified)
