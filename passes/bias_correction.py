"""Empirical bias correction: fold the expected output shift of weight rounding into the bias."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxq.numerics import QTYPES, fake_quantize
from onnxq.qparams import QParams
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)


def _output_shift(node: ir.Node, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """E[(Q(W) - W) x] per output channel, given the input's per-channel mean."""
    if node.op_type == "Conv":
        groups = node.attributes.get_int("group", 1)
        summed = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # [O, I/g]
        per_group = mean.reshape(groups, summed.shape[1])
        owner = np.arange(summed.shape[0]) // (summed.shape[0] // groups)
        return np.einsum("oi,oi->o", summed, per_group[owner])
    if node.op_type == "ConvTranspose":
        groups = node.attributes.get_int("group", 1)
        summed = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2)  # [I, O/g]
        per_group = summed.reshape(groups, -1, summed.shape[1])
        shift = np.einsum("gij,gi->gj", per_group, mean.reshape(groups, -1)).reshape(-1)
        # each output pixel receives on average 1/prod(strides) of the kernel's taps
        return shift / np.prod(node.attributes.get_ints("strides", [1]))
    if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
        matrix = delta if node.attributes.get_int("transB", 0) else delta.T  # [N, K]
        return matrix @ mean
    return None


class BiasCorrectionPass(ir.passes.InPlacePass):
    """Subtract the mean output error caused by weight rounding from each planned bias.

    Changes: float bias initializers of Conv/ConvTranspose/Gemm layers whose bias
    is planned for int32 quantization: ``b -= (Q(W) - W) . E[x]`` with E[x] the
    per-channel input mean from calibration (Nagel et al. 2019, empirical form).
    Q(W) is computed with the same qparams the emission pass will use.
    """

    def __init__(self, plan: QuantPlan, input_means: dict[str, np.ndarray],
                 weight_qparams: dict[str, QParams]):
        super().__init__()
        self.plan = plan
        self.weight_qparams = weight_qparams
        self.input_means = input_means

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        corrected = 0
        for bias_name, bias in self.plan.biases.items():
            mean = self.input_means.get(bias.activation)
            spec = self.plan.weights.get(bias.weight)
            value = model.graph.initializers.get(bias_name)
            if mean is None or spec is None or value is None:
                continue
            w = model.graph.initializers[bias.weight].const_value.numpy()
            params = self.weight_qparams[bias.weight]
            delta = fake_quantize(w, params.scale, params.zero_point, QTYPES[spec.qtype],
                                  params.axis) - w
            node = next(node for node, _ in value.uses())
            shift = _output_shift(node, delta.astype(np.float64), mean.astype(np.float64))
            if shift is None or shift.shape != value.const_value.shape:
                continue
            new = value.const_value.numpy().astype(np.float64) - shift
            value.const_value = ir.tensor(new.astype(np.float32), name=bias_name)
            corrected += 1
        logger.info("bias-corrected %d layers", corrected)
        return ir.passes.PassResult(model, corrected > 0)
