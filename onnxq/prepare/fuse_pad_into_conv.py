"""Fold zero-constant Pad nodes into the following Conv's ``pads`` attribute."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules.common import _fuse_pad_into_conv


class FusePadIntoConvPass(ir.passes.InPlacePass):
    """Pad(constant 0) -> Conv becomes one Conv with the pads added.

    Changes: removes the Pad node and updates ``pads`` (and ``auto_pad``) of
    the Conv.  Exact in FP32.  Without it a quantized Pad would sit between the
    activation Q/DQ and the Conv and block the runtime's QLinearConv fusion.
    Non-zero pad values, reflect/edge modes and non-constant pads are left alone.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rules = rewriter.RewriteRuleSet([
            _fuse_pad_into_conv.normalize_pad_format_conv_rule,
            _fuse_pad_into_conv.fuse_pad_into_conv_rule,
        ])
        result = rewriter.RewritePass(rules)(model)
        ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, result.modified)
