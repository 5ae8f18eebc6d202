"""The quantization pipeline: clean-up passes, annotation, calibration, QDQ emission."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    LiftSubgraphInitializersToMainGraphPass,
    NameFixPass,
    RemoveInitializersFromInputsPass,
    RemoveUnusedNodesPass,
    TopologicalSortPass,
)

from onnxq.annotate import annotate
from onnxq.calibration import calibrate, channel_means, collect_outputs
from onnxq.config import QuantConfig
from onnxq.data import Feed, Limited
from onnxq.errors import OnnxqError
from onnxq.model_io import check_model
from onnxq.passes import (
    AnalyticBiasCorrectionPass,
    CrossLayerEqualizationPass,
    EmitQDQPass,
    EmpiricalBiasCorrectionPass,
    Float16ToFloat32Pass,
    FoldConstantsPass,
    FuseBatchNormPass,
    FuseMatMulAddPass,
    FusePadIntoConvPass,
    LearnedRoundingPass,
    LocalizeShapePass,
    OpsetUpgradePass,
    PreCalibrateWeightsPass,
    RefineActivationRangesPass,
    TolerantShapeInferencePass,
)
from onnxq.passes.emit_qdq import activation_readouts
from onnxq.passes.refine_ranges import refinable, sample_window
from onnxq.progress import Progress
from onnxq.qparams import QParams, fit_int32_biases, resolve_activations, resolve_weights
from onnxq.reconstruction import RoundingConfig
from onnxq.simulate import quantized_copy
from onnxq.spec import QuantPlan
from onnxq.sqnr_guard import WIDE, guard, outputs_on

VERSION = "0.1.0"


@dataclasses.dataclass
class QuantReport:
    """What a run did: passes, counts, what stayed float and why, timings."""

    passes: list[str]
    quantized_activations: int
    quantized_weights: int
    float_nodes: dict[str, str]
    calibration_samples: int | None
    seconds: float
    reconstruction: list[dict] = dataclasses.field(default_factory=list)
    widened_for_bias: list[str] = dataclasses.field(default_factory=list)
    """Weights whose scales were widened so that their int32 biases fit."""
    promoted: list[dict] = dataclasses.field(default_factory=list)
    """Activation groups ``--min-sqnr`` moved to 16 bits (most harmful first)."""
    guard_sqnr_db: list[float] = dataclasses.field(default_factory=list)
    """Output SQNR on the held-out samples before and after ``--min-sqnr``'s promotions."""
    output_cosine: float | None = None

    def to_json(self, stored: bool = False) -> str:
        """The report as JSON; ``stored=True`` gives the copy kept in the model's metadata:
        no timings (one seed gives the same bytes) and no check of the written file."""
        data = dataclasses.asdict(self)
        if stored:
            data.pop("seconds")
            data.pop("output_cosine")
            for block in data["reconstruction"]:
                block.pop("seconds", None)
        return json.dumps(data, indent=1, sort_keys=True)


def run_passes(passes: list[ir.passes.PassBase], model: ir.Model) -> None:
    """Run ``passes`` in order; a pass's OnnxqError reaches the user as it is."""
    try:
        ir.passes.PassManager(passes)(model)
    except ir.passes.PassError as exc:
        cause = exc.__cause__
        while isinstance(cause, ir.passes.PassError):  # the pass manager nests its errors
            cause = cause.__cause__
        if isinstance(cause, OnnxqError):
            raise cause from None
        raise


def normalize(model: ir.Model) -> None:
    """Put the graph in the form every later pass assumes, then check it: nodes in
    topological order, no initializer listed as an input (older exports' weights-as-inputs
    would stay inputs of the quantized model), ``onnx.checker`` clean."""
    try:
        run_passes([TopologicalSortPass(), RemoveInitializersFromInputsPass()], model)
    except ir.passes.PassError as exc:
        reason = str(exc.__cause__ or exc).splitlines()[0][:160]
        raise OnnxqError(f"the graph cannot be put in topological order ({reason}); it has a "
                         "cycle or a broken edge: fix or re-export the model") from None
    check_model(model, "the model")


def prepare_passes(config: QuantConfig) -> list[ir.passes.PassBase]:
    """FP32 passes run before annotation: clean-up, fusion, equalization."""
    passes: list[ir.passes.PassBase] = [
        Float16ToFloat32Pass(),
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        LiftSubgraphInitializersToMainGraphPass(),
        FoldConstantsPass(),
    ]
    if config.fuse:
        passes += [FuseBatchNormPass(), FuseMatMulAddPass(), FusePadIntoConvPass()]
    if config.equalize != "none":
        passes.append(CrossLayerEqualizationPass(
            clip_policy="relu" if config.equalize == "relu" else "skip"))
    return passes + [RemoveUnusedNodesPass(), TolerantShapeInferencePass(), LocalizeShapePass(),
                     NameFixPass(), TopologicalSortPass()]


def prepare(model: ir.Model, config: QuantConfig) -> list[str]:
    """Normalize and check the graph, then run the FP32 passes (and any needed opset
    upgrade) in place; return their names."""
    normalize(model)
    passes = prepare_passes(config)
    if model.opset_imports.get("", 1) < config.required_opset:
        passes.insert(0, OpsetUpgradePass(config.required_opset))
    run_passes(passes, model)
    return [type(p).__name__ for p in passes]


REFINE_SAMPLES = 8
"""Calibration samples whose activations range refinement holds in memory (a fixed number)."""
GUARD_SAMPLES = 8
"""Calibration samples after those that ``--min-sqnr`` measures the output SQNR on."""


def _activation_samples(model: ir.Model, plan: QuantPlan, names: list[str],
                        data: Iterable[Feed], config: QuantConfig
                        ) -> dict[str, list[np.ndarray]]:
    """The activations ``names`` for the first REFINE_SAMPLES calibration samples, each cut
    to a bounded window or element subset (``sample_window``) as it arrives."""
    return collect_outputs(model, names, Limited(data, REFINE_SAMPLES),
                           window=lambda name, array: sample_window(plan, name, array),
                           device=config.device, batch_size=config.batch_size)


def held_out(data: Iterable[Feed]) -> list[Feed]:
    """GUARD_SAMPLES calibration samples that range refinement does not see (the first ones
    when there are too few)."""
    feeds = list(Limited(data, REFINE_SAMPLES + GUARD_SAMPLES))
    return feeds[REFINE_SAMPLES:] or feeds[:GUARD_SAMPLES]


def runtime_safe(config: QuantConfig) -> QuantConfig:
    """``config`` with known ONNX Runtime problems worked around, each said in a warning."""
    if config.activations == "int4":
        warnings.warn("ONNX Runtime's fused QDQ kernels compute signed int4 activations wrongly "
                      "(the unfused graph is right); emitting uint4 activations (16 levels, "
                      "asymmetric) instead", stacklevel=3)
        return dataclasses.replace(config, activations="uint4")
    return config


def _fit_biases(model: ir.Model, plan: QuantPlan, activations: dict[str, QParams],
                weights: dict[str, QParams], record: set[str]) -> dict[str, QParams]:
    """Weight qparams under which every int32 bias fits (widened where one would overflow;
    the widened weights are added to ``record``)."""
    fitted, widened = fit_int32_biases(model, plan, activations, weights)
    record.update(widened)
    shared = [name for name, coarsened in widened.items() if coarsened]
    if shared:
        warnings.warn(f"int32 biases would overflow (large bias, tiny input and weight scales):"
                      f" widened the shared weight scales of {len(shared)} layer(s) so they "
                      f"fit, coarsening their other channels ({', '.join(shared[:3])})",
                      stacklevel=3)
    return fitted


def check_reiterable(data: Iterable[Feed], config: QuantConfig) -> None:
    """Refuse a one-shot iterator when the configured passes read the data more than once."""
    multi_pass = (config.refine_ranges or config.bias_correction == "empirical"
                  or config.rounding != "nearest")
    if multi_pass and data is not None and iter(data) is data:
        raise OnnxqError("calibration data is a one-shot iterator, but range refinement and "
                         "bias correction read it more than once: pass a list or an onnxq.data "
                         "source (or use --preset fast)")


@np.errstate(over="ignore", invalid="ignore", divide="ignore")
def quantize_model(model: ir.Model, data: Iterable[Feed] | None, config: QuantConfig,
                   progress: Progress | None = None, total: int | None = None) -> QuantReport:
    """Quantize ``model`` in place with calibration ``data``; return the run's report.

    ``data`` may be None for weight-only quantization (``activations="none"``).  numpy's
    overflow warnings are silenced: extreme weights overflow float32 squares, and the check
    of the written model (``onnxq.output_check``) judges what comes out.
    """
    progress = progress or Progress(quiet=True)
    if data is None and config.needs_data:
        raise OnnxqError("missing calibration data: quantized activations need --calib "
                         "(or use --calib none for weight-only quantization)")
    check_reiterable(data, config)
    config = runtime_safe(config)
    start = time.perf_counter()
    pass_names = prepare(model, config)
    plan = annotate(model, config)
    if not plan.weights and not plan.activations:
        raise OnnxqError("nothing to quantize: the model has no Conv/Gemm/MatMul/Add with float "
                         "inputs (or --exclude matched them all)")
    stream = {"device": config.device, "batch_size": config.batch_size, "progress": progress,
              "total": total}
    observers = calibrate(model, plan, data, **stream) if config.needs_data else {}
    qparams = resolve_activations(plan, observers)
    wide = resolve_activations(plan, observers, WIDE) if config.min_sqnr is not None else {}
    weight_params = resolve_weights(model, plan)
    widened: set[str] = set()
    guard_feeds = held_out(data) if config.min_sqnr is not None else []
    guard_reference = outputs_on(model, guard_feeds, config.device) if guard_feeds else []
    reference = ({name: model.graph.initializers[name].const_value.numpy().copy()
                  for name in [*plan.weights, *plan.biases] if name in model.graph.initializers}
                 if config.rounding != "nearest" else None)  # FP32 values for reconstruction
    if config.precalibrate:
        PreCalibrateWeightsPass(plan, weight_params)(model)
        pass_names.append("PreCalibrateWeightsPass")
    held = (sorted(qparams) if config.min_sqnr is not None  # the guard ranks every group
            else refinable(plan, qparams) if config.refine_ranges else [])
    samples = _activation_samples(model, plan, held, data, config) if held else {}
    if config.refine_ranges and qparams:
        RefineActivationRangesPass(plan, qparams, samples)(model)
        pass_names.append("RefineActivationRangesPass")
    promoted, guard_sqnr = [], []
    if config.min_sqnr is not None and qparams:
        qparams, promoted, guard_sqnr = guard(model, plan, config, qparams, wide, weight_params,
                                              samples, guard_feeds, guard_reference)
        pass_names.append("MinSqnrGuard")  # bias correction then sees the 16-bit inputs
    weight_params = _fit_biases(model, plan, qparams, weight_params, widened)
    if config.bias_correction == "empirical":
        inputs = sorted({bias.activation for bias in plan.biases.values()} & set(qparams))

        def measure(current: ir.Model) -> dict[str, np.ndarray]:
            copy = quantized_copy(current, config, qparams, weight_params)
            readouts = activation_readouts(copy)
            means = channel_means(copy, [readouts[name][0] for name in inputs], data,
                                  stage="bias correction", **stream)
            found = {}
            for name in inputs:
                tensor, integer = readouts[name]
                found[name] = (qparams[name].dequantize_mean(means[tensor]) if integer
                               else means[tensor])
            return found

        EmpiricalBiasCorrectionPass(plan, weight_params, measure)(model)
        pass_names.append("EmpiricalBiasCorrectionPass")
    elif config.bias_correction == "analytic":
        AnalyticBiasCorrectionPass(plan, weight_params)(model)
        pass_names.append("AnalyticBiasCorrectionPass")
    reconstruction = []
    if config.rounding != "nearest":  # starts from the corrected biases and refined ranges
        rounding = LearnedRoundingPass(plan, qparams, weight_params, data, RoundingConfig(
            method=config.rounding, iters=config.iters, learn_scale=config.learn_scale,
            fisher=config.loss == "fisher", cache_mb=config.cache_mb, seed=config.seed,
            device=config.device),
            progress, reference)
        rounding(model)
        pass_names.append("LearnedRoundingPass")
        reconstruction = [dataclasses.asdict(r) for r in rounding.reports]
    weight_params = _fit_biases(model, plan, qparams, weight_params, widened)
    EmitQDQPass(plan, qparams, weight_params)(model)
    pass_names.append("EmitQDQPass")
    report = QuantReport(
        passes=pass_names,
        quantized_activations=len(qparams),
        quantized_weights=len(plan.weights),
        float_nodes=dict(sorted(plan.float_nodes.items())),
        calibration_samples=total,
        seconds=round(time.perf_counter() - start, 2),
        reconstruction=reconstruction,
        widened_for_bias=sorted(widened),
        promoted=promoted,
        guard_sqnr_db=guard_sqnr,
    )
    model.metadata_props["onnxq.version"] = VERSION
    model.metadata_props["onnxq.config"] = json.dumps(dataclasses.asdict(config), sort_keys=True)
    model.metadata_props["onnxq.report"] = report.to_json(stored=True)
    return report
