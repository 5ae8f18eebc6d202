"""Learned rounding: weights rounded up or down so each block reproduces its FP32 output."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnxq.io.data import Feed
from onnxq.plan.qparams import QParams
from onnxq.progress import Progress
from onnxq.refine.rounding.reconstruct import BlockReport, Reconstructor, RoundingConfig
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)


class LearnedRoundingPass(ir.passes.InPlacePass):
    """AdaRound (per layer), BRECQ (per block) or QDrop reconstruction, written back.

    Changes: the float initializers of every planned weight in a reconstructed block are
    replaced by their learned grid values ``s * q`` (``q`` the learned integers, ``s`` the
    resolved scale), so emission writes exactly those integers; with ``learn_bias`` the
    biases of those layers take their learned values.  Blocks with an op the torch
    evaluator lacks keep round-to-nearest and are listed in ``reports`` with the reason.
    ``reference`` holds the FP32 weights/biases where earlier passes (bias correction,
    pre-calibration) changed them: the FP32 targets use those, the biases start corrected.
    """

    def __init__(self, plan: QuantPlan, activation_qparams: dict[str, QParams],
                 weight_qparams: dict[str, QParams], data: Iterable[Feed],
                 config: RoundingConfig, progress: Progress | None = None,
                 reference: dict[str, np.ndarray] | None = None):
        super().__init__()
        self.args = (plan, activation_qparams, weight_qparams, config, progress, reference)
        self.data = data
        self.reports: list[BlockReport] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        reconstructor = Reconstructor(model, *self.args)
        self.reports = reconstructor.run(self.data)
        initializers = model.graph.initializers
        for name, array in {**reconstructor.weights, **reconstructor.biases}.items():
            value = initializers[name]
            value.const_value = ir.tensor(np.asarray(array, np.float32), name=name)
        for report in self.reports:
            if report.note:
                logger.warning("%s: %s", report.block, report.note)
        return ir.passes.PassResult(model, bool(reconstructor.weights))
