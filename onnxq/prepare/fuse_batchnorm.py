"""Fold BatchNormalization into the Conv/ConvTranspose/Gemm that feeds it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript import rewriter
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from onnxq.graph import values_by_name

BN_STATS = "onnxq.bn_stats"
"""``node.meta`` key: per-channel (mean, std) of a fused layer's output, from its BatchNorm."""

_FOLDABLE = {"Conv", "ConvTranspose", "Gemm"}


def _bn_output_stats(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """The batch-norm's output distribution per channel: mean beta, std |gamma|."""
    gamma, beta = (bn.inputs[i].const_value if len(bn.inputs) > i and bn.inputs[i] else None
                   for i in (1, 2))
    if gamma is None or beta is None:
        return None
    return beta.numpy().astype(np.float64), np.abs(gamma.numpy().astype(np.float64))


class FuseBatchNormPass(ir.passes.InPlacePass):
    """BatchNormalization after Conv/ConvTranspose/Gemm is folded into that layer.

    Changes: removes the BatchNormalization node and rewrites the layer's weight
    and bias initializers (onnxscript's fuse_batchnorm rules); exact up to float
    rounding.  Skipped when the layer's weights are shared or not constant.  The
    fused layer's ``node.meta[BN_STATS]`` keeps the BatchNorm's (beta, |gamma|),
    the per-channel output mean and std that data-free passes (high-bias
    absorption, analytic bias correction) rely on; it is not serialized.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        stats = {}
        for node in model.graph:
            producer = node.inputs[0].producer() if node.inputs and node.inputs[0] else None
            if node.op_type == "BatchNormalization" and producer is not None \
                    and producer.op_type in _FOLDABLE:
                found = _bn_output_stats(node)
                if found is not None:
                    stats[node.outputs[0].name] = found
        rules = rewriter.RewriteRuleSet([fuse_batchnorm_into_conv_rule,
                                         fuse_batchnorm_into_conv_transpose_rule,
                                         fuse_batchnorm_into_gemm_rule])
        result = rewriter.RewritePass(rules)(model)
        values = values_by_name(model.graph)
        for name, found in stats.items():
            producer = values[name].producer() if name in values else None
            if producer is not None and producer.op_type in _FOLDABLE:
                producer.meta[BN_STATS] = found
        return ir.passes.PassResult(model, result.modified)
