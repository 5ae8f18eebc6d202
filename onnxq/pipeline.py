"""The quantization pipeline: clean-up passes, annotation, calibration, QDQ emission."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable

import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    NameFixPass,
    RemoveUnusedNodesPass,
    TopologicalSortPass,
)

from onnxq.annotate import annotate
from onnxq.calibration import calibrate
from onnxq.config import QuantConfig
from onnxq.data import Feed
from onnxq.errors import OnnxqError
from onnxq.passes import (
    BiasCorrectionPass,
    EmitQDQPass,
    FoldConstantsPass,
    FusePadIntoConvPass,
    OpsetUpgradePass,
    TolerantShapeInferencePass,
)
from onnxq.progress import Progress
from onnxq.qparams import resolve_activations, resolve_weights

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

    def to_json(self) -> str:
        """The report as JSON (also stored in the model's metadata)."""
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


def prepare_passes() -> list[ir.passes.PassBase]:
    """Clean-up passes run before annotation (all exact in FP32)."""
    return [
        LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        FoldConstantsPass(),
        FusePadIntoConvPass(),
        RemoveUnusedNodesPass(),
        TolerantShapeInferencePass(),
        NameFixPass(),
        TopologicalSortPass(),
    ]


def prepare(model: ir.Model, config: QuantConfig) -> list[str]:
    """Run the clean-up passes (and any needed opset upgrade) in place; return their names."""
    passes = prepare_passes()
    if model.opset_imports.get("", 1) < config.required_opset:
        passes.insert(0, OpsetUpgradePass(config.required_opset))
    ir.passes.PassManager(passes)(model)
    return [type(p).__name__ for p in passes]


def quantize_model(model: ir.Model, data: Iterable[Feed], config: QuantConfig,
                   progress: Progress | None = None, total: int | None = None) -> QuantReport:
    """Quantize ``model`` in place with calibration ``data``; return the run's report."""
    progress = progress or Progress(quiet=True)
    start = time.perf_counter()
    pass_names = prepare(model, config)
    plan = annotate(model, config)
    if not plan.weights and not plan.activations:
        raise OnnxqError("nothing to quantize: the model has no Conv/Gemm/MatMul/Add with float "
                         "inputs (or --exclude matched them all)")
    means_wanted = [b.activation for b in plan.biases.values()] if config.bias_correction else []
    observers, means = calibrate(model, plan, data, device=config.device,
                                 batch_size=config.batch_size, progress=progress, total=total,
                                 channel_means=means_wanted)
    qparams = resolve_activations(plan, observers)
    weight_params = resolve_weights(model, plan)
    if config.bias_correction:
        BiasCorrectionPass(plan, {name: m.mean for name, m in means.items()}, weight_params)(model)
        pass_names.append("BiasCorrectionPass")
    EmitQDQPass(plan, qparams, weight_params)(model)
    pass_names.append("EmitQDQPass")
    report = QuantReport(
        passes=pass_names,
        quantized_activations=len(qparams),
        quantized_weights=len(plan.weights),
        float_nodes=dict(sorted(plan.float_nodes.items())),
        calibration_samples=total,
        seconds=round(time.perf_counter() - start, 2),
    )
    model.metadata_props["onnxq.version"] = VERSION
    model.metadata_props["onnxq.config"] = json.dumps(dataclasses.asdict(config), sort_keys=True)
    model.metadata_props["onnxq.report"] = report.to_json()
    return report
