"""The quantization pipeline: the stage order, declared once (``STAGES``), run over one state.

prepare (FP32 passes) -> plan (annotation) -> allocate (weight widths under a budget) ->
calibrate (one streaming sweep, qparams) ->
refine (references, pre-calibration, range refinement, the accuracy guard, int32 bias fit,
bias correction, learned rounding) -> emit (every Q/DQ).  Each stage lives in its folder.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import time
import warnings
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnxq.allocate.stage import allocate_stage, pareto_stage
from onnxq.analysis.matmulnbits import fusion_summary
from onnxq.calibrate.stage import calibrate_stage
from onnxq.config import QuantConfig
from onnxq.emit.stage import emit_stage
from onnxq.errors import OnnxqError
from onnxq.io.data import Feed
from onnxq.plan.stage import plan_stage
from onnxq.prepare.stage import prepare_stage
from onnxq.progress import Progress
from onnxq.refine import stages as refine
from onnxq.spec import QuantPlan
from onnxq.state import QuantState, RunContext, Stage

logger = logging.getLogger(__name__)

VERSION = importlib.metadata.version("onnxq")
"""The installed package's version (pyproject.toml holds the one copy), stored in every output."""


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
    target: str = "ort-cpu"
    target_rules: dict[str, int] = dataclasses.field(default_factory=dict)
    """How often each of the target's rules changed a decision."""
    allocation: dict = dataclasses.field(default_factory=dict)
    """Bit allocation's budget, score and the width of every weight (under a budget)."""
    overrides: list[dict] = dataclasses.field(default_factory=list)
    """The ``--overrides`` rules: where each was written, what it sets, how many nodes it
    changed."""
    decisions: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Node -> the target rules and overrides that changed its decisions."""
    matmulnbits: dict = dataclasses.field(default_factory=dict)
    """With 4-bit or blocked MatMul/Gemm weights: how many ORT CPU fuses into MatMulNBits,
    and why the others are not."""
    pareto: dict | None = None
    """The measured trade-off across budgets (``--pareto``; not part of the report's JSON)."""
    output_cosine: float | None = None
    plan: str = dataclasses.field(default="", repr=False)
    """The run's plan as JSON (``QuantPlan.to_json``; not part of the report's JSON)."""

    def to_json(self, stored: bool = False) -> str:
        """The report as JSON; ``stored=True`` gives the copy kept in the model's metadata:
        no timings (one seed gives the same bytes) and no check of the written file."""
        data = dataclasses.asdict(self)
        data.pop("plan")
        data.pop("pareto")
        if stored:
            data.pop("seconds")
            data["allocation"].pop("score_seconds", None)
            data.pop("output_cosine")
            for block in data["reconstruction"]:
                block.pop("seconds", None)
        return json.dumps(data, indent=1, sort_keys=True)


def runtime_safe(config: QuantConfig) -> QuantConfig:
    """``config`` with known ONNX Runtime problems worked around, each said in a warning."""
    if config.activations == "int4":
        warnings.warn("ONNX Runtime's fused QDQ kernels compute signed int4 activations wrongly "
                      "(the unfused graph is right); emitting uint4 activations (16 levels, "
                      "asymmetric) instead", stacklevel=3)
        return dataclasses.replace(config, activations="uint4")
    return config


def check_reiterable(data: Iterable[Feed], config: QuantConfig) -> None:
    """Refuse a one-shot iterator when the configured passes read the data more than once."""
    multi_pass = (config.refine_ranges or config.bias_correction == "empirical"
                  or config.learned_rounding)
    if multi_pass and data is not None and iter(data) is data:
        raise OnnxqError("calibration data is a one-shot iterator, but range refinement and "
                         "bias correction read it more than once: pass a list or an onnxq.io.data "
                         "source (or use --preset fast)")


STAGES: tuple[Stage, ...] = (
    Stage("prepare", prepare_stage),
    Stage("plan", plan_stage),
    Stage("allocate", allocate_stage, lambda s, ctx: ctx.config.budget is not None),
    Stage("calibrate", calibrate_stage),
    Stage("pareto", pareto_stage, lambda s, ctx: ctx.pareto and s.allocation is not None),
    Stage("references", refine.keep_references),
    Stage("precalibrate", refine.precalibrate, lambda s, ctx: ctx.config.precalibrate),
    Stage("gptq", refine.gptq_rounding, lambda s, ctx: ctx.config.rounding == "gptq"),
    Stage("samples", refine.hold_samples),
    Stage("ranges", refine.refine_ranges,
          lambda s, ctx: ctx.config.refine_ranges and bool(s.activations)),
    Stage("guard", refine.min_sqnr_guard,
          lambda s, ctx: ctx.config.min_sqnr is not None and bool(s.activations)),
    Stage("fixed qparams", refine.fixed_target_qparams, lambda s, ctx: bool(s.activations)),
    Stage("fit biases", refine.fit_biases),
    Stage("bias correction", refine.empirical_bias_correction,
          lambda s, ctx: ctx.config.bias_correction == "empirical"),
    Stage("bias correction", refine.analytic_bias_correction,
          lambda s, ctx: ctx.config.bias_correction == "analytic"),
    Stage("learned rounding", refine.learned_rounding,
          lambda s, ctx: ctx.config.learned_rounding),
    Stage("fit biases", refine.fit_biases),  # learned rounding may have moved the weights
    Stage("emit", emit_stage),
)
"""The stage order: every run goes through these, each stage only ``when`` it applies."""


@np.errstate(over="ignore", invalid="ignore", divide="ignore")
def quantize_model(model: ir.Model, data: Iterable[Feed] | None, config: QuantConfig,
                   progress: Progress | None = None, total: int | None = None,
                   plan: QuantPlan | None = None, pareto: bool = False,
                   ray: str | None = None) -> QuantReport:
    """Quantize ``model`` in place with calibration ``data`` (and ``plan`` instead of
    annotation, when given); return the run's report.  Under a weight budget, ``pareto``
    also measures the trade-off across budgets; ``ray`` runs bit allocation's independent
    jobs on that Ray cluster.

    ``data`` may be None for weight-only quantization (``activations="none"``).  numpy's
    overflow warnings are silenced: extreme weights overflow float32 squares, and the check
    of the written model (``onnxq.analysis.output_check``) judges what comes out.
    """
    if data is None and config.reads_data:
        raise OnnxqError("missing calibration data: quantized activations and --rounding "
                         "gptq need --calib (or use --calib none for weight-only "
                         "quantization)")
    check_reiterable(data, config)
    config = runtime_safe(config)
    start = time.perf_counter()
    ctx = RunContext(config, data, progress or Progress(quiet=True), total, plan, pareto, ray)
    state = QuantState(model)
    passes = []
    for stage in STAGES:
        if stage.when(state, ctx):
            began = time.perf_counter()
            passes += stage.run(state, ctx)
            logger.info("stage %s: %.2f s", stage.name, time.perf_counter() - began)
    report = QuantReport(
        passes=passes,
        quantized_activations=len(state.activations),
        quantized_weights=len(state.plan.weights),
        float_nodes=dict(sorted(state.plan.float_nodes.items())),
        calibration_samples=total,
        seconds=round(time.perf_counter() - start, 2),
        reconstruction=state.reconstruction,
        widened_for_bias=sorted(state.widened),
        promoted=state.promoted,
        guard_sqnr_db=state.guard_sqnr_db,
        target=config.target.name,
        target_rules=dict(sorted(state.target_rules.items())),
        allocation=({} if state.allocation is None
                    else state.allocation.report(config.weight_storage)),
        overrides=[{"rule": rule.where, "sets": rule.describe(),
                    "nodes": state.target_rules.get(rule.where, 0)} for rule in config.overrides],
        decisions=dict(sorted(state.plan.decisions.items())),
        matmulnbits=fusion_summary(model),
        pareto=state.pareto,
        plan=state.plan.to_json(),
    )
    model.metadata_props["onnxq.version"] = VERSION
    model.metadata_props["onnxq.config"] = json.dumps(dataclasses.asdict(config), sort_keys=True)
    model.metadata_props["onnxq.report"] = report.to_json(stored=True)
    return report
