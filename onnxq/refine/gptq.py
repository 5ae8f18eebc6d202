"""Second-order weight rounding after GPTQ (Frantar et al., arXiv 2210.17323), weight-only.

For a weight ``W [K, N]`` read as ``x @ W``, the error a rounding adds to the layer's output
on the calibration inputs is ``tr(E^T H E)`` with ``H = X^T X`` (``X``: the FP32 inputs).
The K input rows are rounded one after another, largest ``H`` diagonal first (act-order);
each row's rounding error is pushed onto the rows not yet rounded through the Cholesky
factor of ``H^-1``, so later rows compensate for it.  The scales and zero points (per
block, channel or tensor) stay the ones already resolved ("static groups"), which keeps
every block a MatMulNBits block and lets act-order permute rows freely.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnxq.calibrate.stream import stream_outputs
from onnxq.io.data import Feed
from onnxq.numerics.affine import QTYPES, QType, per_element
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)

DAMPING = 0.01
"""Added to ``H``'s diagonal, as a fraction of its mean (GPTQ's ``percdamp``)."""
GROUP = 128
"""Rows rounded between two matrix updates of the remaining rows (GPTQ's lazy batch)."""


def gptq_round(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero: np.ndarray,
               qtype: QType) -> np.ndarray:
    """The integers of ``w [K, N]`` (one scale and zero point per element) that GPTQ's
    row-by-row rounding with error feedback through ``hessian [K, K]`` chooses."""
    w, h = w.astype(np.float64), hessian.astype(np.float64)  # copies
    dead = np.diag(h) <= 0  # inputs that were always zero: nothing to compensate with
    h[dead, dead] = 1.0
    h += DAMPING * np.mean(np.diag(h)) * np.eye(len(h))
    order = np.argsort(-np.diag(h), kind="stable")
    w, h, scale, zero = w[order], h[order][:, order], scale[order], zero[order]
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U, U upper triangular
    q = np.empty_like(w)
    for start in range(0, len(w), GROUP):
        stop = min(start + GROUP, len(w))
        errors = np.empty((stop - start, w.shape[1]))
        for i in range(start, stop):
            q[i] = np.clip(np.round(w[i] / scale[i]) + zero[i], qtype.qmin, qtype.qmax)
            errors[i - start] = (w[i] - (q[i] - zero[i]) * scale[i]) / u[i, i]
            w[i + 1:stop] -= np.outer(u[i, i + 1:stop], errors[i - start])
        w[stop:] -= u[start:stop, stop:].T @ errors
    rounded = np.empty_like(q)
    rounded[order] = q
    return rounded


def gptq_weights(model: ir.Model, plan: QuantPlan) -> dict[str, str]:
    """Planned weights GPTQ rounds -> the input they multiply: the rank-2 right operand of
    one MatMul, or of one Gemm without transposes (others keep round-to-nearest)."""
    found = {}
    initializers = model.graph.initializers
    for name in plan.weights:
        value = initializers[name]
        uses = value.uses()
        if len(uses) != 1 or len(value.const_value.shape) != 2:
            continue
        node, index = uses[0]
        plain = node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not node.attributes.get_int("transA", 0)
            and not node.attributes.get_int("transB", 0))
        if plain and index == 1 and node.inputs[0] is not None and node.inputs[0].name:
            found[name] = node.inputs[0].name
    return found


def input_hessians(model: ir.Model, inputs: dict[str, str], data: Iterable[Feed],
                   **stream) -> dict[str, np.ndarray]:
    """``X^T X`` of each weight's FP32 input over the data (one sweep, summed per batch)."""
    hessians: dict[str, np.ndarray] = {}
    names = sorted(set(inputs.values()))
    for outputs in stream_outputs(model, names, data, stage="gptq inputs", **stream):
        for name, array in outputs.items():
            x = array.reshape(-1, array.shape[-1]).astype(np.float64)
            hessians[name] = hessians.get(name, 0) + x.T @ x
    return hessians


class GPTQRoundingPass(ir.passes.InPlacePass):
    """Changes: each MatMul/Gemm weight GPTQ handles (``gptq_weights``) is replaced by the
    grid values of its GPTQ rounding under its resolved qparams, which emission then writes
    as the same integers; the others are left for round-to-nearest."""

    def __init__(self, plan: QuantPlan, weight_qparams: dict[str, QParams],
                 data: Iterable[Feed], stream: dict):
        super().__init__()
        self.plan, self.weight_qparams, self.data, self.stream = plan, weight_qparams, data, stream
        self.rounded: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inputs = gptq_weights(model, self.plan)
        hessians = input_hessians(model, inputs, self.data, **self.stream) if inputs else {}
        initializers = model.graph.initializers
        for name, source in inputs.items():
            if source not in hessians:  # an If branch never taken on the data
                continue
            w = initializers[name].const_value.numpy()
            params = self.weight_qparams[name]
            scale = per_element(params.scale, w.shape, params.axis, params.block_size)
            zero = per_element(params.zero_point, w.shape, params.axis, params.block_size)
            q = gptq_round(w, hessians[source], scale.astype(np.float64), zero,
                           QTYPES[params.qtype])
            values = ((q - zero) * scale).astype(np.float32)
            initializers[name].const_value = ir.tensor(values, name=name)
            self.rounded.append(name)
        logger.info("GPTQ rounded %d of %d weights", len(self.rounded), len(self.plan.weights))
        return ir.passes.PassResult(model, bool(self.rounded))
