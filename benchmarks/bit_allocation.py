"""Bit allocation against its ablations and two peers' methods, on the same candidates.

Each suite model is prepared, planned, scored and calibrated once (the pipeline up to its
Pareto stage); then every method picks int8 or int4 per weight group at each budget
(average weight bits), and every plan is measured the same way: nearest rounding, the
calibrated activations, on ``--val`` samples of the model's val split (output KL and SQNR
to FP32, top-1 agreement, the suite's task metric).

- ``onnxq``: the exact solver (0/1 program) on the fisher scores (the default importance);
  ``fisher-diag`` and ``weight``: the same solver on the other importance scores.
- ``greedy fisher``: the fisher scores, but filled greedily (least score per bit saved
  first) instead of solved: what the exact solver adds.
- ``AIMET-AMP-style``: one evaluation per group at int4 (the rest int8; SQNR on the scored
  calibration samples, AIMET's built-in metric), then cumulative flips to int4 in that
  sorted order until the budget holds.
- ``NNCF-style``: the data-free weight error, layers sorted by it and filled with int4 until
  the budget holds (NNCF weight compression's ratio fill).

    python benchmarks/bit_allocation.py --models lite0 --json ba.json --plot ba.png
    python benchmarks/bit_allocation.py --models lite0,yolov8n,tiny_bert --val 100
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from onnxq.allocate.importance import quantized_weights
from onnxq.allocate.pareto import EvalJob, evaluate
from onnxq.allocate.solve import Budget, solve
from onnxq.allocate.stage import importance_scores
from onnxq.analysis.validate import compare
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.models import suite
from onnxq.pipeline import STAGES, runtime_safe
from onnxq.progress import Progress
from onnxq.refine.guard import outputs_on
from onnxq.state import QuantState, RunContext

BUDGETS = (4.25, 4.5, 4.75, 5.0, 5.5, 6.0, 7.0)
METHODS = ("onnxq", "fisher-diag", "weight", "greedy fisher", "AIMET-AMP-style",
           "NNCF-style")


def scored(fp32: Path, calib: list, samples: int) -> tuple[QuantState, RunContext]:
    """The pipeline up to the Pareto stage: fisher scores, the first budget's plan, the
    calibrated activations."""
    config = runtime_safe(QuantConfig.from_preset("fast", avg_weight_bits=BUDGETS[0],
                                                  samples=samples))
    ctx = RunContext(config, calib, Progress(quiet=True), len(calib))
    state = QuantState(load_model(fp32))
    for stage in STAGES:
        if stage.name == "pareto":
            break
        if stage.when(state, ctx):
            stage.run(state, ctx)
    return state, ctx


def greedy(order: list[int], costs: np.ndarray, limit: float) -> np.ndarray:
    """All int8 (index 0), then groups flipped to int4 (index 1) in ``order`` until the
    total cost is within ``limit``."""
    chosen = np.zeros(len(costs), dtype=int)
    for row in order:
        if costs[np.arange(len(costs)), chosen].sum() <= limit:
            break
        chosen[row] = 1
    return chosen


def per_bit(scores: np.ndarray, costs: np.ndarray) -> list[int]:
    """Groups by score increase per unit of cost saved going to int4, least first."""
    return list(np.argsort((scores[:, 1] - scores[:, 0]) / (costs[:, 0] - costs[:, 1])))


def plans(state: QuantState, ctx: RunContext, job: EvalJob) -> tuple[dict, dict]:
    """method -> budget -> type indices, and the seconds each method's scoring took."""
    allocation = state.allocation
    groups, costs = allocation.groups, allocation.costs
    quantized = quantized_weights(state.model, allocation.candidates)
    scores, seconds = {"onnxq": allocation.scores}, {"onnxq": allocation.seconds}
    for importance in ("fisher-diag", "weight"):
        began = time.perf_counter()
        scores[importance] = importance_scores(state, ctx, importance, groups, quantized)[0]
        seconds[importance] = time.perf_counter() - began
    began = time.perf_counter()
    narrow = []
    for index in range(len(groups)):
        widths = tuple("int4" if i == index else "int8" for i in range(len(groups)))
        narrow.append(-(evaluate(job, widths)["sqnr_db"] or -np.inf))
    seconds["AIMET-AMP-style"] = time.perf_counter() - began
    aimet = list(np.argsort(narrow))
    nncf = list(np.argsort(scores["weight"][:, 1]))
    chosen = {}
    for method in METHODS:
        chosen[method] = {}
        for value in BUDGETS:
            budget = Budget("avg-weight-bits", value)
            if method in ("onnxq", "fisher-diag", "weight"):
                chosen[method][value] = solve(scores[method], costs, budget)
            elif method == "greedy fisher":
                chosen[method][value] = greedy(per_bit(scores["onnxq"], costs), costs, value)
            elif method == "AIMET-AMP-style":
                chosen[method][value] = greedy(aimet, costs, value)
            else:
                chosen[method][value] = greedy(nncf, costs, value)
    seconds["greedy fisher"], seconds["NNCF-style"] = seconds["onnxq"], seconds["weight"]
    return chosen, seconds


def measure(job: EvalJob, widths: tuple[str, ...], entry: suite.SuiteModel, val: list,
            labels: list | None, reference: list) -> dict:
    """One plan measured on ``val``: KL/SQNR/agreement to FP32, top-1, the task metric."""
    fp32, quantized = job.models(widths)
    result = compare(fp32, quantized, val, labels=labels)
    sqnr = min(output.sqnr_db for output in result.outputs)
    row = {"sqnr_db": round(sqnr, 2), "kl": result.kl_to_fp32,
           "top1_agreement": result.top1_agreement, "top1": result.top1_quantized}
    if entry.metric not in ("agreement",):
        row[entry.metric] = entry.score(reference, outputs_on(quantized, val, "cpu"))[
            entry.metric]
    return row


def run_model(entry: suite.SuiteModel, folder: Path, val_count: int, samples: int) -> dict:
    fp32 = entry.export(folder / f"{entry.name}.onnx")
    calib = entry.feeds("calib", samples, 0)
    val = entry.feeds("val", min(val_count, entry.val), 0)
    labels = entry.labels("val", len(val), 0) if entry.labels else None
    state, ctx = scored(fp32, calib, samples)
    allocation = state.allocation
    chosen_weights = {name for g in allocation.groups for name in g.weights}
    score_feeds = calib[:ctx.config.score_samples]
    job = EvalJob.of(state.model, state.plan, allocation.groups, state.activations,
                     {k: v for k, v in state.weights.items() if k not in chosen_weights},
                     allocation.candidates, score_feeds, "cpu")
    chosen, seconds = plans(state, ctx, job)
    reference = outputs_on(job.models(("int8",) * len(allocation.groups))[0], val, "cpu")
    cache: dict[tuple, dict] = {}
    rows: dict[str, dict] = {}
    for method, by_budget in chosen.items():
        rows[method] = {}
        for value, picks in by_budget.items():
            widths = allocation.widths(picks)
            if widths not in cache:
                cache[widths] = measure(job, widths, entry, val, labels, reference)
            rows[method][value] = {**allocation.point(picks, {}), **cache[widths]}
            click.echo(f"  {entry.name} {method:16} {value:5} -> "
                       f"{rows[method][value]['avg_weight_bits']:.3f} bits: "
                       f"{_metrics(rows[method][value], entry)}")
    uniform = {t: {**allocation.point(np.full(len(allocation.groups), i), {}),
                   **measure(job, (t,) * len(allocation.groups), entry, val, labels,
                             reference)} for i, t in enumerate(allocation.types)}
    return {"groups": len(allocation.groups), "val": len(val),
            "score_seconds": {k: round(v, 2) for k, v in seconds.items()},
            "uniform": uniform, "rows": rows}


def _metrics(row: dict, entry: suite.SuiteModel) -> str:
    parts = [f"KL {row['kl']:.4f}" if row["kl"] is not None else "",
             f"SQNR {row['sqnr_db']:.2f} dB"]
    if row.get("top1") is not None:
        parts.append(f"top-1 {row['top1']:.3f}")
    if entry.metric in row:
        parts.append(f"{entry.metric} {row[entry.metric]:.4f}")
    return ", ".join(p for p in parts if p)


def dominance(result: dict, key: str) -> dict[str, str]:
    """Per other method: how many of its points some onnxq point (or uniform int8/int4, the
    solver's answer at 8 and 4 bits) matches or beats on ``key`` (lower KL, higher SQNR)
    at no more bits."""
    better = (lambda a, b: a <= b) if key == "kl" else (lambda a, b: a >= b)
    ours = [*result["rows"]["onnxq"].values(), *result["uniform"].values()]
    out = {}
    for method, rows in result["rows"].items():
        if method == "onnxq":
            continue
        points = [p for p in rows.values() if p[key] is not None]
        beaten = sum(any(q["avg_weight_bits"] <= p["avg_weight_bits"] + 1e-9
                         and better(q[key], p[key]) for q in ours) for p in points)
        out[method] = f"{beaten}/{len(points)}"
    return out


def plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(results), figsize=(5.5 * len(results), 4),
                                   squeeze=False)
    for axis, (name, result) in zip(axes[0], results.items(), strict=True):
        key = "kl" if result["uniform"]["int8"]["kl"] is not None else "sqnr_db"
        for method, rows in result["rows"].items():
            points = sorted(rows.values(), key=lambda r: r["avg_weight_bits"])
            axis.plot([p["avg_weight_bits"] for p in points], [p[key] for p in points],
                      "o-" if method == "onnxq" else ".--", label=method)
        for qtype, row in result["uniform"].items():
            axis.plot(row["avg_weight_bits"], row[key], "s", label=f"uniform {qtype}")
        if key == "kl":
            axis.set_yscale("log")
        axis.set_title(f"{name} ({result['val']} val samples)")
        axis.set_xlabel("average weight bits")
        axis.set_ylabel({"kl": "output KL to FP32", "sqnr_db": "output SQNR (dB)"}[key])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


@click.command()
@click.option("--models", default="lite0,yolov8n,tiny_bert", show_default=True)
@click.option("--val", "val_count", type=int, default=100, show_default=True)
@click.option("--samples", type=int, default=128, show_default=True,
              help="Calibration samples (the first 64 are scored).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None)
def main(models: str, val_count: int, samples: int, json_path: str | None,
         plot_path: str | None) -> None:
    """Print every method's point at every budget, then who dominates."""
    results = {}
    for name in models.split(","):
        entry = suite.SUITE[name]
        if (reason := entry.missing()) is not None:
            click.echo(f"{name}: skipped ({reason})")
            continue
        with tempfile.TemporaryDirectory() as folder:
            results[name] = run_model(entry, Path(folder), val_count,
                                      min(samples, entry.calib))
        result = results[name]
        click.echo(f"{name}: {result['groups']} groups; scoring seconds "
                   f"{result['score_seconds']}")
        for key in ("kl", "sqnr_db"):
            if result["uniform"]["int8"][key] is not None:
                click.echo(f"  points onnxq dominates on {key}: {dominance(result, key)}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1, default=float))
    if plot_path:
        plot(Path(plot_path), results)


if __name__ == "__main__":
    main()
