"""MatMul followed by a bias Add becomes one Gemm where the shapes allow."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules.common import _matmul_add_to_gemm


class _ConstantBiasMatMulAdd(_matmul_add_to_gemm.MatMulAddToGemm):
    """onnxscript's MatMul+Add -> Gemm, limited to a constant bias Gemm can broadcast."""

    def check(self, context, input_a, input_b, input_c, **_):
        result = super().check(context, input_a, input_b)
        if not result:
            return result
        bias = input_c.const_value
        n = input_b.shape[1] if input_b.shape is not None else None
        if bias is None or len(bias.shape) != 1 or not isinstance(n, int) \
                or bias.shape[0] not in (1, n):
            return result.fail("the Add operand is not a constant [N] bias")
        return result


class FuseMatMulAddPass(ir.passes.InPlacePass):
    """``Add(MatMul(a, W), b)`` with 2-D ``a``/``W`` and a constant 1-D ``b`` becomes ``Gemm``.

    Changes: replaces the two nodes with one Gemm (exact), so the layer is
    quantized as a unit with an int32 bias.  Batched (rank > 2) MatMuls, and
    Adds of run-time tensors or of shapes Gemm cannot broadcast, are left alone.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rules = rewriter.RewriteRuleSet([_ConstantBiasMatMulAdd().rule()])
        result = rewriter.RewritePass(rules)(model)
        return ir.passes.PassResult(model, result.modified)
