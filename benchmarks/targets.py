"""Target profiles on their own runtimes: each suite model quantized for each --target, then
checked against the target's rules, loaded on its runtime (ORT CPU, the QNN HTP simulator,
OpenVINO CPU; TensorRT/CUDA only where a GPU is), scored against FP32 on the runtime's own
outputs, with each layer's executed precision and the latency (1 thread, batch 1).  W4A8 on
ort-cpu runs with int4 in int8 containers and packed, beside W8A8, in the same run.

    python benchmarks/targets.py --json targets.json
    python benchmarks/targets.py --models lite0 --targets ort-cpu,qnn-htp --qnn-val 10
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import numpy as np

from onnxq.analysis.validate import latency_ms
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.io.data import NpzFolder, model_inputs
from onnxq.io.model_io import load_model
from onnxq.models import suite
from onnxq.targets.conformance import problems
from onnxq.targets.profile import load_target
from onnxq.targets.runtimes import load_on, missing

ROWS = {"W8A8": {}, "W4A8 int8-container": {"weights": "int4"},
        "W4A8 packed": {"weights": "int4", "int4_storage": "packed"}}
"""Rows run on ort-cpu; the other targets run W8A8 only."""


def _latency(run, feed, budget_s: float = 3.0) -> float:
    once = latency_ms(run, feed, runs=1, warmup=1) / 1000
    return latency_ms(run, feed, runs=int(np.clip(budget_s / max(once, 1e-4), 3, 50)))


def run_target(entry: suite.SuiteModel, fp32: Path, calib: Path, val: list, reference: list,
               target: str, options: dict, qnn_val: int, out: Path) -> dict:
    """One model quantized for one target (default preset): rules, layers, score, latency."""
    profile = load_target(target)
    data = NpzFolder(calib, model_inputs(load_model(fp32)), entry.calib)
    config = QuantConfig.from_preset("default", target=profile, samples=entry.calib, **options)
    report = quantize(fp32, out, data, config, quiet=True)
    row = {"broken_rules": len(problems(load_model(out), profile)),
           "target_rules": report.target_rules, "quantize_s": report.seconds}
    reason = missing(profile.runtime)
    if reason is not None:
        row["runtime"] = f"not run: {reason}"
        return row
    try:
        run = load_on(out, profile.runtime)
    except OnnxqError as exc:
        row["runtime"] = f"failed: {exc}"
        return row
    count = qnn_val if profile.runtime == "qnn-htp" else len(val)
    order = [run.output_names.index(value.name) for value in load_model(fp32).graph.outputs]
    got = []
    for feed in val[:count]:
        outputs = run.infer(feed)
        got.append([outputs[k] for k in order])
    row.update(runtime=profile.runtime, layers=dict(run.layers), samples=count,
               **entry.score(reference[:count], got))
    if profile.runtime != "qnn-htp":  # the simulator's time is not a device's
        row["latency_ms"] = _latency(run, val[0])
    return row


def print_model(name: str, fp32_ms: float, rows: dict) -> None:
    click.echo(f"\n{name} (FP32 on ORT CPU {fp32_ms:.2f} ms)")
    for key, row in rows.items():
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                            if isinstance(v, float) and k not in ("latency_ms", "quantize_s"))
        layers = ", ".join(f"{k} {v}" for k, v in sorted(row.get("layers", {}).items()))
        speed = (f"{row['latency_ms']:.2f} ms ({row['latency_ms'] / fp32_ms:.2f}x FP32)"
                 if "latency_ms" in row else "-")
        click.echo(f"  {key:30} rules broken {row['broken_rules']}; {row.get('runtime')}; "
                   f"{metrics}; {speed}; {layers}")


@click.command()
@click.option("--models", default="lite0,yolov8n,tiny_bert", show_default=True)
@click.option("--targets", "target_names", default="ort-cpu,qnn-htp,openvino-cpu,tensorrt",
              show_default=True)
@click.option("--val", "val_count", type=int, default=100, show_default=True,
              help="Evaluation samples (at most each model's own).")
@click.option("--qnn-val", type=int, default=20, show_default=True,
              help="Evaluation samples on the QNN HTP simulator (slow: about 1 s per image).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(models: str, target_names: str, val_count: int, qnn_val: int,
         json_path: str | None) -> None:
    """Print one block per model: a row per target (and W4A8 rows on ort-cpu)."""
    results = {}
    for name in models.split(","):
        entry = suite.SUITE[name]
        if (reason := entry.missing()) is not None:
            click.echo(f"\n{name}: skipped ({reason})")
            continue
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            fp32 = entry.export(tmp / f"{name}.onnx")
            calib = suite.write_npz_folder(entry.feeds("calib", entry.calib, 0), tmp / "calib")
            val = entry.feeds("val", min(val_count, entry.val), 0)
            reference = suite.outputs(fp32, val)
            fp32_ms = _latency(str(fp32), val[0])
            rows = {}
            for target in target_names.split(","):
                for row_name, options in ROWS.items():
                    if row_name != "W8A8" and target != "ort-cpu":
                        continue
                    key = f"{target} {row_name}"
                    rows[key] = run_target(entry, fp32, calib, val, reference, target, options,
                                           qnn_val, tmp / f"{key.replace(' ', '_')}.onnx")
            results[name] = {"fp32_latency_ms": fp32_ms, "rows": rows}
            print_model(name, fp32_ms, rows)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
