"""The measured trade-off: plans across budgets, each quantized and compared with FP32 on
held-out calibration samples, written as JSON and a PNG plot."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxq.allocate.groups import WeightGroup, with_widths
from onnxq.analysis.validate import compare
from onnxq.emit.simulate import quantized_copy
from onnxq.io.data import Feed
from onnxq.io.model_io import to_proto
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan

PARETO_FORMAT = "onnxq.pareto/1"
MEASURED = ("round-to-nearest weights and the calibrated activations, before bias correction "
            "and learned rounding")


@dataclasses.dataclass
class EvalJob:
    """What every Pareto evaluation needs (picklable, for a Ray worker)."""

    model: bytes
    plan: str
    groups: list[WeightGroup]
    activations: dict[str, QParams]
    weights: dict[str, QParams]
    """Qparams of the weights bit allocation does not choose for."""
    candidates: dict[str, dict[str, QParams]]
    feeds: list[Feed]
    device: str

    @classmethod
    def of(cls, model: ir.Model, plan: QuantPlan, groups: list[WeightGroup],
           activations: dict[str, QParams], weights: dict[str, QParams],
           candidates: dict[str, dict[str, QParams]], feeds: list[Feed], device: str
           ) -> EvalJob:
        return cls(to_proto(model).SerializeToString(), plan.to_json(), groups, activations,
                   weights, candidates, feeds, device)


    def models(self, widths: tuple[str, ...]) -> tuple[ir.Model, ir.Model]:
        """The FP32 model and its simulated quantized copy with each group at its width in
        ``widths`` (nearest rounding)."""
        model = ir.from_proto(onnx.load_from_string(self.model))
        chosen = dict(zip((g.name for g in self.groups), widths, strict=True))
        plan = with_widths(QuantPlan.from_json(self.plan), self.groups, chosen)
        weights = dict(self.weights)
        for group in self.groups:
            for name in group.weights:
                weights[name] = self.candidates[chosen[group.name]][name]
        return model, quantized_copy(model, plan, self.activations, weights)


def evaluate(job: EvalJob, widths: tuple[str, ...]) -> dict[str, float | None]:
    """Output agreement with FP32 of the plan with each group at its width in ``widths``."""
    model, quantized = job.models(widths)
    result = compare(model, quantized, job.feeds, device=job.device)
    sqnr = min(output.sqnr_db for output in result.outputs)
    return {"sqnr_db": round(sqnr, 3) if math.isfinite(sqnr) else None,
            "kl": None if result.kl_to_fp32 is None else round(result.kl_to_fp32, 6),
            "top1_agreement": result.top1_agreement}


def draw(front: dict):
    """The front's figure (matplotlib, imported by the caller): each measured metric
    against the budget, the chosen point starred."""
    from matplotlib import pyplot

    x_key = "avg_weight_bits" if front["budget"]["kind"] == "avg-weight-bits" else "size_mb"
    metrics = [m for m in ("kl", "sqnr_db") if all(p[m] is not None for p in front["points"])]
    figure, axes = pyplot.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4),
                                   squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        ours = sorted((p for p in front["points"] if p["kind"] == "onnxq"),
                      key=lambda p: p[x_key])
        axis.plot([p[x_key] for p in ours], [p[metric] for p in ours], "o-",
                  label=f"onnxq ({front['importance']})")
        for point in front["points"]:
            if point["kind"] != "onnxq":
                axis.plot(point[x_key], point[metric], "s", label=point["kind"])
            if point["chosen"]:
                axis.plot(point[x_key], point[metric], "*", markersize=16, color="red",
                          label="chosen")
        if metric == "kl":
            axis.set_yscale("log")
        axis.set_xlabel(x_key.replace("_", " "))
        axis.set_ylabel({"kl": "output KL to FP32", "sqnr_db": "output SQNR (dB)"}[metric])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{front['samples']} held-out calibration samples; {MEASURED}",
                    fontsize=7)
    figure.tight_layout()
    return figure


def plot(path: Path, front: dict) -> Path | None:
    """The plot of ``front`` beside its JSON at ``path`` (``.png``); a missing plotting
    library is a warning, not an error.  Returns the PNG's path when one was written."""
    try:
        import matplotlib
    except ImportError:
        warnings.warn("no Pareto plot: install matplotlib (pip install 'onnxq[plot]'); the "
                      f"JSON is at {path}", stacklevel=2)
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure = draw(front)
    png = path.with_suffix(".png")
    figure.savefig(png, dpi=110)
    pyplot.close(figure)
    return png
