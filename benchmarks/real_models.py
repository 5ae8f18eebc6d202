"""The real-model suite: onnxq (--preset fast, default, --rounding brecq) and ORT's
quantize_static on each model of onnxq.models.suite, in one run.

Calibration data goes in as README documents for inputs whose shapes vary: a folder of
one-sample .npz files.  Each quantization runs in a fresh process (its seconds and peak
RSS are its own).  Prints a table per model and writes JSON.

    python benchmarks/real_models.py --json real_models.json
    python benchmarks/real_models.py --models yolov8n,fcpe --calib 32
    python benchmarks/real_models.py --models yolov8n --min-sqnr 30
    python benchmarks/real_models.py --rows "onnxq default" --target-file rules.toml
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from onnxq.analysis.validate import latency_ms
from onnxq.models import suite
from onnxq.refine.guard import output_sqnr

sys.path.insert(0, str(Path(__file__).parent))

TOOLS = {"onnxq fast": {"preset": "fast"}, "onnxq default": {"preset": "default"},
         "onnxq brecq": {"preset": "default", "rounding": "brecq"}, "ort quantize_static": None}


def tools(min_sqnr: float | None) -> dict[str, dict | None]:
    """The rows to run: tool name -> onnxq config options (None: ORT's quantize_static)."""
    rows = dict(TOOLS)
    if min_sqnr is not None:
        rows[f"onnxq --min-sqnr {min_sqnr:g}"] = {"preset": "default", "min_sqnr": min_sqnr}
    return rows


def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program (VmHWM: ru_maxrss would carry
    the parent's peak over from the fork)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _quantize(options: dict | None, fp32: str, out: str, calib: str, samples: int,
              queue, target: tuple[str, str | None] = ("ort-cpu", None)) -> None:
    """In a fresh process: quantize with onnxq ``options`` (None: ORT's tool); put (seconds,
    peak RSS MB, error)."""
    from onnxq.io.data import NpzFolder, model_inputs
    from onnxq.io.model_io import load_model

    data = NpzFolder(calib, model_inputs(load_model(fp32)), samples)
    try:
        start = time.perf_counter()
        if options is None:
            from ort_baseline import ort_quantize_static

            ort_quantize_static(Path(fp32), Path(out), data)
        else:
            from onnxq.api import quantize
            from onnxq.config import QuantConfig
            from onnxq.targets.profile import load_target

            quantize(fp32, out, data, QuantConfig.from_preset(
                **options, samples=samples, target=load_target(*target)), quiet=True)
        error = None
    except Exception as exc:  # noqa: BLE001 - a tool's failure is a row of the table
        error = " ".join(str(exc).split())[:200] or type(exc).__name__
    queue.put((time.perf_counter() - start, peak_rss_mb(), error))


def quantize_in_child(options: dict | None, fp32: Path, out: Path, calib: Path,
                      samples: int, target: tuple[str, str | None] = ("ort-cpu", None)) -> dict:
    """Seconds, peak RSS and error of one quantization in a fresh process (onnxq rows for
    ``target``: a profile name and an overriding TOML file or None)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_quantize, args=(options, str(fp32), str(out), str(calib),
                                                    samples, queue, target))
    child.start()
    seconds, rss, error = queue.get()
    child.join()
    return {"quantize_s": seconds, "peak_rss_mb": rss, "error": error}


def promoted_count(path: Path) -> int:
    """How many activation groups ``--min-sqnr`` moved to 16 bits (the stored report)."""
    import onnx

    stored = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    return len(json.loads(stored["onnxq.report"])["promoted"])


def latency(path: Path, feed: dict, budget_s: float = 3.0) -> float:
    """ORT CPU latency (1 thread), as many runs as fit in about ``budget_s``."""
    once = latency_ms(str(path), feed, runs=1, warmup=1) / 1000
    return latency_ms(str(path), feed, runs=int(np.clip(budget_s / max(once, 1e-4), 3, 50)))


def run_model(entry: suite.SuiteModel, tmp: Path, calib_count: int | None,
              val_count: int | None, rows_to_run: dict[str, dict | None],
              target: tuple[str, str | None] = ("ort-cpu", None)) -> dict:
    """Every tool on one suite model: metrics, SQNR, low-bit share, time, RSS, latency."""
    calib_count, val_count = calib_count or entry.calib, val_count or entry.val
    fp32 = entry.export(tmp / f"{entry.name}.onnx")
    calib = suite.write_npz_folder(entry.feeds("calib", calib_count, 0),
                                   tmp / f"{entry.name}-calib")
    val = entry.feeds("val", val_count, 0)
    reference = suite.outputs(fp32, val)
    fp32_ms = latency(fp32, val[0])
    rows = {}
    for k, (tool, options) in enumerate(rows_to_run.items()):
        out = tmp / f"{entry.name}.{k}.onnx"
        row = quantize_in_child(options, fp32, out, calib, calib_count, target)
        if row["error"] is None:
            got = suite.outputs(out, val)
            row.update(entry.score(reference, got), sqnr_db=output_sqnr(reference, got),
                       low_bit_share=suite.low_bit_share(out),
                       latency_ms=latency(out, val[0]), fp32_latency_ms=fp32_ms)
            if options and "min_sqnr" in options:
                row["promoted"] = promoted_count(out)
            if entry.labels is not None:
                row.update(suite.top1(entry.labels("val", val_count, 0), reference, got))
        rows[tool] = row
    return {"calib": calib_count, "val": val_count, "metric": entry.metric, "floor": entry.floor,
            "licence": entry.licence, "rows": rows}


def print_table(name: str, result: dict) -> None:
    """One model's rows."""
    metric = result["metric"]
    click.echo(f"\n{name} ({result['calib']} calibration / {result['val']} evaluation samples; "
               f"target {metric} >= {result['floor']}; licence {result['licence']})")
    click.echo(f"{'tool':20} {metric:>10} {'SQNR dB':>8} {'low-bit':>7} {'quant s':>8} "
               f"{'RSS MB':>7} {'ms':>8} {'xFP32':>6}  other")
    for tool, row in result["rows"].items():
        if row["error"]:
            click.echo(f"{tool:20} failed after {row['quantize_s']:.1f} s: {row['error']}")
            continue
        others = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in {
            metric, "sqnr_db", "low_bit_share", "quantize_s", "peak_rss_mb", "latency_ms",
            "fp32_latency_ms", "error"})
        click.echo(f"{tool:20} {row[metric]:10.4f} {row['sqnr_db']:8.2f} "
                   f"{row['low_bit_share']:7.3f} {row['quantize_s']:8.1f} "
                   f"{row['peak_rss_mb']:7.0f} {row['latency_ms']:8.2f} "
                   f"{row['latency_ms'] / row['fp32_latency_ms']:6.2f}  {others}")


@click.command()
@click.option("--models", default=",".join(suite.SUITE), show_default=True)
@click.option("--calib", "calib_count", type=int, default=None,
              help="Calibration samples (default: each model's own).")
@click.option("--val", "val_count", type=int, default=None,
              help="Evaluation samples (default: each model's own).")
@click.option("--min-sqnr", type=float, default=None, metavar="DB",
              help="Also run the default preset with --min-sqnr DB.")
@click.option("--rows", default=None, help="Comma-separated tool rows to run (default: all).")
@click.option("--target", default="ort-cpu", show_default=True, help="onnxq rows' --target.")
@click.option("--target-file", default=None, help="onnxq rows' --target-file.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(models: str, calib_count: int | None, val_count: int | None, min_sqnr: float | None,
         rows: str | None, target: str, target_file: str | None, json_path: str | None) -> None:
    """Run the suite and print a table per model."""
    results = {}
    chosen = tools(min_sqnr)
    if rows:
        chosen = {name: chosen[name] for name in rows.split(",")}
    for name in models.split(","):
        entry = suite.SUITE[name]
        reason = entry.missing()
        if reason:
            click.echo(f"\n{name}: skipped ({reason})")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run_model(entry, Path(tmp), calib_count, val_count, chosen,
                                      (target, target_file))
        print_table(name, results[name])
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
