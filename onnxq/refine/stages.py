"""The refine stages: what improves the plan's numbers between calibration and emission.

Each is a ``Stage.run``: it reads and updates the ``QuantState`` and returns the passes it
ran.  Learned rounding imports torch only when it runs.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnxq.calibrate.stream import channel_means, collect_outputs
from onnxq.emit.qdq import activation_readouts
from onnxq.emit.simulate import quantized_copy
from onnxq.errors import OnnxqError
from onnxq.io.data import Feed, Limited
from onnxq.plan.annotate import PASS_THROUGH
from onnxq.plan.qparams import constant_source_qparams, fit_int32_biases, fixed_qparams
from onnxq.refine.bias_correction import AnalyticBiasCorrectionPass, EmpiricalBiasCorrectionPass
from onnxq.refine.gptq import GPTQRoundingPass
from onnxq.refine.guard import guard, outputs_on
from onnxq.refine.precalibrate import PreCalibrateWeightsPass
from onnxq.refine.ranges import RefineActivationRangesPass, refinable, sample_window
from onnxq.state import QuantState, RunContext

REFINE_SAMPLES = 8
"""Calibration samples whose activations range refinement holds in memory (a fixed number)."""
GUARD_SAMPLES = 8
"""Calibration samples after those that ``--min-sqnr`` measures the output SQNR on."""


def held_out(data: Iterable[Feed]) -> list[Feed]:
    """GUARD_SAMPLES calibration samples that range refinement does not see (the first ones
    when there are too few)."""
    feeds = list(Limited(data, REFINE_SAMPLES + GUARD_SAMPLES))
    return feeds[REFINE_SAMPLES:] or feeds[:GUARD_SAMPLES]


def keep_references(state: QuantState, ctx: RunContext) -> list[str]:
    """Before any weight changes: the FP32 outputs on ``--min-sqnr``'s held-out samples, and
    the FP32 weights and biases learned rounding reconstructs towards."""
    config, model, plan = ctx.config, state.model, state.plan
    if config.min_sqnr is not None:
        state.guard_feeds = held_out(ctx.data)
        state.guard_outputs = outputs_on(model, state.guard_feeds, config.device)
    if config.learned_rounding:
        initializers = model.graph.initializers
        state.reference = {name: initializers[name].const_value.numpy().copy()
                           for name in [*plan.weights, *plan.biases] if name in initializers}
    return []


def precalibrate(state: QuantState, ctx: RunContext) -> list[str]:
    """Data-free pre-calibration of the weights (``--precalibrate``)."""
    PreCalibrateWeightsPass(state.plan, state.weights)(state.model)
    return ["PreCalibrateWeightsPass"]


def gptq_rounding(state: QuantState, ctx: RunContext) -> list[str]:
    """GPTQ's second-order rounding of the MatMul/Gemm weights (``--rounding gptq``)."""
    GPTQRoundingPass(state.plan, state.weights, ctx.data, ctx.stream)(state.model)
    return ["GPTQRoundingPass"]


def hold_samples(state: QuantState, ctx: RunContext) -> list[str]:
    """Windows of the activations range refinement (or the guard, which ranks every group)
    measures, on the first REFINE_SAMPLES calibration samples."""
    config, plan = ctx.config, state.plan
    held = (sorted(state.activations) if config.min_sqnr is not None
            else refinable(plan, state.activations) if config.refine_ranges else [])
    if held:
        state.samples = collect_outputs(
            state.model, held, Limited(ctx.data, REFINE_SAMPLES),
            window=lambda name, array: sample_window(plan, name, array),
            device=config.device, batch_size=config.batch_size)
    return []


def refine_ranges(state: QuantState, ctx: RunContext) -> list[str]:
    """Clip activation ranges where their consumers' output error is least."""
    RefineActivationRangesPass(state.plan, state.activations, state.samples)(state.model)
    return ["RefineActivationRangesPass"]


def min_sqnr_guard(state: QuantState, ctx: RunContext) -> list[str]:
    """``--min-sqnr``: the fewest, most harmful groups to 16 bits (bias correction then sees
    the 16-bit inputs)."""
    state.activations, state.promoted, state.guard_sqnr_db = guard(
        state.model, state.plan, ctx.config, state.activations, state.wide, state.weights,
        state.samples, state.guard_feeds, state.guard_outputs)
    return ["MinSqnrGuard"]


def fit_biases(state: QuantState, ctx: RunContext) -> list[str]:
    """Weight qparams under which every int32 bias fits (widened where one would overflow;
    the widened weights are recorded in the state)."""
    fitted, widened = fit_int32_biases(state.model, state.plan, state.activations,
                                       state.weights)
    state.weights = fitted
    state.widened.update(widened)
    shared = [name for name, coarsened in widened.items() if coarsened]
    if shared:
        warnings.warn(f"int32 biases would overflow (large bias, tiny input and weight scales):"
                      f" widened the shared weight scales of {len(shared)} layer(s) so they "
                      f"fit, coarsening their other channels ({', '.join(shared[:3])})",
                      stacklevel=3)
    return []


def fixed_target_qparams(state: QuantState, ctx: RunContext) -> list[str]:
    """Qparams that are not measured, over the measured ones (after range refinement and the
    guard, which chose the grids): the target's fixed output qparams (QNN's 16-bit
    Sigmoid/Tanh), and a quantized constant's own where a Gather/Slice/... moves its
    integers."""
    changed = fixed_qparams(state.model, state.plan, state.activations,
                            ctx.config.target.fixed_qparams)
    if changed:
        state.target_rules["fixed output qparams"] += changed
    shared = constant_source_qparams(state.model, state.plan, state.activations,
                                     state.weights, PASS_THROUGH)
    if shared:
        state.target_rules["lookups keep their table's qparams"] += shared
    return []


def empirical_bias_correction(state: QuantState, ctx: RunContext) -> list[str]:
    """Bias correction from the quantized network's measured channel means."""
    plan, qparams = state.plan, state.activations
    inputs = sorted({bias.activation for bias in plan.biases.values()} & set(qparams))

    def measure(current: ir.Model) -> dict[str, np.ndarray]:
        copy = quantized_copy(current, plan, qparams, state.weights)
        readouts = activation_readouts(copy)
        means = channel_means(copy, [readouts[name][0] for name in inputs], ctx.data,
                              stage="bias correction", **ctx.stream)
        found = {}
        for name in inputs:
            tensor, integer = readouts[name]
            found[name] = (qparams[name].dequantize_mean(means[tensor]) if integer
                           else means[tensor])
        return found

    EmpiricalBiasCorrectionPass(plan, state.weights, measure)(state.model)
    return ["EmpiricalBiasCorrectionPass"]


def analytic_bias_correction(state: QuantState, ctx: RunContext) -> list[str]:
    """Bias correction from BatchNorm statistics, without data."""
    AnalyticBiasCorrectionPass(state.plan, state.weights)(state.model)
    return ["AnalyticBiasCorrectionPass"]


def learned_rounding(state: QuantState, ctx: RunContext) -> list[str]:
    """Block reconstruction from the corrected biases and refined ranges (imports torch)."""
    try:
        from onnxq.refine.rounding.learned_rounding import LearnedRoundingPass
        from onnxq.refine.rounding.reconstruct import RoundingConfig
    except ImportError as exc:
        raise OnnxqError(f"--rounding {ctx.config.rounding} needs torch ({exc}): install it "
                         "with pip install 'onnxq[rounding]', or use --rounding nearest") from None

    config = ctx.config
    rounding = LearnedRoundingPass(
        state.plan, state.activations, state.weights, ctx.data,
        RoundingConfig(method=config.rounding, iters=config.iters,
                       learn_scale=config.learn_scale, learn_steps=config.learn_steps,
                       fisher=config.loss == "fisher",
                       cache_mb=config.cache_mb, seed=config.seed, device=config.device),
        ctx.progress, state.reference)
    rounding(state.model)
    state.reconstruction = [dataclasses.asdict(r) for r in rounding.reports]
    return ["LearnedRoundingPass"]
