"""The per-layer report on real models: Lite0 W8A8 at 8 and 64 batches (seconds, peak RSS:
memory must stay flat), Lite0 W4A8 and YOLOv8n W8A8 reports, then Netron and Chromium
screenshots of them (benchmarks/browser_checks.py).

    python benchmarks/report_cost.py --work /tmp/report-bench [--rounding brecq]

Needs the ImageNet sample beside the project (../shared/data/imagenet-sample) and the
nudenet wheel for YOLOv8n (pip install --no-deps nudenet==3.4.2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from onnxq.cli.demo import find_imagenet_sample
from onnxq.models import efficientnet_lite, suite, yolov8n

HERE = Path(__file__).parent


def timed(args: list[str]) -> tuple[float, float, str]:
    """Run ``args`` under /usr/bin/time: wall seconds, peak RSS in GB, and the output."""
    done = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *args], check=False,
                          capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-2000:]}")
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("TIME "))
    seconds, kilobytes = line.split()[1:]
    return float(seconds), int(kilobytes) / 2**20, done.stdout


def onnxq(*args) -> list[str]:
    return [sys.executable, "-m", "onnxq", *map(str, args)]


@click.command()
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              default=Path("report-bench"), show_default=True)
@click.option("--rounding", default="nearest", show_default=True,
              help="Weight rounding of the Lite0 W4A8 model (brecq takes minutes).")
def main(work: Path, rounding: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    sample = find_imagenet_sample()
    if sample is None:
        sys.exit("the ImageNet sample is missing (../shared/data/imagenet-sample)")
    lite0 = work / "lite0.onnx"
    if not lite0.exists():
        efficientnet_lite.export(lite0)
    calib, val = sample / "calib", sample / "val"
    w8, w4 = work / "lite0.w8a8.onnx", work / "lite0.w4a8.onnx"
    for out, flags in ((w8, ()), (w4, ("--weights", "int4", "--rounding", rounding))):
        if not out.exists():
            timed(onnxq("quantize", lite0, "--calib", calib, "-o", out, "--quiet", *flags))
    rows = []
    for batches in (8, 64):
        html = _folder(work / f"lite0.w8a8.b{batches}") / "report.html"
        seconds, rss, _ = timed(onnxq("report", lite0, w8, "--data", val, "-o", html,
                                      "--json", html.with_suffix(".json"), "--batches",
                                      batches, "--batch-size", 4, "--quiet"))
        rows.append((f"Lite0 W8A8, {batches} batches of 4", seconds, rss, html))
    reports = []
    for name, fp32, quantized, data in [("Lite0 W4A8", lite0, w4, val), *_yolo(work)]:
        html = _folder(work / quantized.stem) / "report.html"
        seconds, rss, _ = timed(onnxq("report", fp32, quantized, "--data", data, "-o", html,
                                      "--json", html.with_suffix(".json"), "--quiet"))
        rows.append((f"{name}, 8 batches of 8", seconds, rss, html))
        reports.append(html)
    print("| report | seconds | peak RSS (GB) | output SQNR (dB) | worst layer (only-this-layer "
          "SQNR, suggested fix) |")
    print("|---|---|---|---|---|")
    for name, seconds, rss, html in rows:
        data = json.loads(html.with_suffix(".json").read_text())
        worst = data["culprits"][0]
        print(f"| {name} | {seconds:.1f} | {rss:.2f} | {data['output_sqnr_db']} | "
              f"{worst['node']} ({worst['only_layer_sqnr_db']} dB, "
              f"{worst['suggestion'].split(', ', 1)[-1]}) |")
    shots = work / "screenshots"
    subprocess.run([sys.executable, HERE / "browser_checks.py", "--model", w4, "--out", shots,
                    *(a for html in reports for a in ("--report", html))], check=True)


def _folder(path: Path) -> Path:
    """A folder of its own per report (each writes an overrides.toml beside it)."""
    path.mkdir(exist_ok=True)
    return path


def _yolo(work: Path) -> list[tuple[str, Path, Path, Path]]:
    """YOLOv8n W8A8 and its data (none when the nudenet wheel is missing)."""
    if yolov8n.missing():
        print(f"YOLOv8n skipped: {yolov8n.missing()}")
        return []
    fp32, quantized = work / "yolov8n.onnx", work / "yolov8n.w8a8.onnx"
    calib, val = work / "yolo-calib", work / "yolo-val"
    if not quantized.exists():
        yolov8n.export(fp32)
        suite.write_npz_folder(yolov8n.feeds("calib", 128), calib)
        suite.write_npz_folder(yolov8n.feeds("val", 64), val)
        timed(onnxq("quantize", fp32, "--calib", calib, "-o", quantized, "--quiet"))
    return [("YOLOv8n W8A8", fp32, quantized, val)]


if __name__ == "__main__":
    main()
