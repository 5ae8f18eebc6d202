"""EfficientNet-Lite0 W8A8: onnxq vs onnxruntime.quantization.quantize_static, in one run.

Calibrates both on ``calib/`` and scores on ``val/`` of ../shared/data/imagenet-sample
(skips when absent).  Prints a table and writes JSON.

    python benchmarks/lite0_w8a8.py --samples 256 --json lite0_w8a8.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from onnxq.analysis.validate import compare, latency_ms
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.data import ImageFolder
from onnxq.io.model_io import load_model
from onnxq.io.runtime import optimized_op_types
from onnxq.models.efficientnet_lite import INPUT_NAME, PREPROCESS, export

sys.path.insert(0, str(Path(__file__).parent))
from ort_baseline import ort_quantize_static

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"


def interleaved_latency(paths: dict[str, Path], feed: dict, rounds: int = 5) -> dict[str, float]:
    """Median over alternating rounds, so machine-load drift hits every model alike."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            times[name].append(latency_ms(str(path), feed))
    return {name: float(np.median(t)) for name, t in times.items()}


@click.command()
@click.option("--samples", default=256, show_default=True)
@click.option("--observer", default="minmax", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(samples: int, observer: str, json_path: str | None) -> None:
    """Run the W8A8 comparison and print a table."""
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} not found")
        return
    calib = ImageFolder(DATA / "calib", INPUT_NAME, PREPROCESS, samples=samples, seed=0)
    val = ImageFolder(DATA / "val", INPUT_NAME, PREPROCESS)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        fp32 = export(tmp / "lite0.onnx")
        rows = {}
        ours = tmp / "lite0.onnxq.onnx"
        start = time.perf_counter()
        quantize(fp32, ours, calib, QuantConfig(observer=observer, samples=samples), quiet=True)
        rows["onnxq"] = {"quantize_s": time.perf_counter() - start, "path": ours}
        theirs = tmp / "lite0.ort.onnx"
        rows["ort quantize_static"] = {"quantize_s": ort_quantize_static(fp32, theirs, calib),
                                       "path": theirs}
        reference = load_model(fp32)
        feed = next(iter(val))
        paths = {"fp32": fp32, **{name: row["path"] for name, row in rows.items()}}
        latency = interleaved_latency(paths, feed)
        fp32_ms = latency["fp32"]
        for tool, row in rows.items():
            result = compare(reference, load_model(row["path"]), val, labels=val.labels)
            ops = optimized_op_types(row["path"])
            row.update(top1=result.top1_quantized, agreement=result.top1_agreement,
                       kl=result.kl_to_fp32, latency_ms=latency[tool],
                       size_mb=row["path"].stat().st_size / 1e6,
                       qlinearconv=ops.count("QLinearConv"),
                       float_conv=ops.count("Conv") + ops.count("FusedConv"))
            row["fp32_top1"] = result.top1_fp32
            del row["path"]
    header = (f"{'tool':22} {'top1':>6} {'agree':>6} {'KL':>8} {'quant s':>8} {'ms':>7} "
              f"{'xFP32':>6} {'MB':>6} {'QLinConv':>8}")
    click.echo(f"FP32 top-1 {rows['onnxq']['fp32_top1']:.3f}, latency {fp32_ms:.2f} ms "
               f"(batch 1, 1 thread), {samples} calibration images")
    click.echo(header)
    for name, r in rows.items():
        click.echo(f"{name:22} {r['top1']:6.3f} {r['agreement']:6.3f} {r['kl']:8.5f} "
                   f"{r['quantize_s']:8.1f} {r['latency_ms']:7.2f} "
                   f"{r['latency_ms'] / fp32_ms:6.2f} "
                   f"{r['size_mb']:6.2f} {r['qlinearconv']:8d}")
    if json_path:
        Path(json_path).write_text(json.dumps({"fp32_latency_ms": fp32_ms, "samples": samples,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
