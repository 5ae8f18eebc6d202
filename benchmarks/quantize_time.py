"""Quantization time of onnxq's default preset against ORT's quantize_static on each suite
model, in one run, each quantization in a fresh process, nothing else running: the real-model
issue's "default <= 2x ORT's tool" check without the accuracy rows.

    python benchmarks/quantize_time.py
    python benchmarks/quantize_time.py --models yolov8n,fcpe --repeat 2
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from onnxq.models import suite

sys.path.insert(0, str(Path(__file__).parent))
from real_models import quantize_in_child


@click.command()
@click.option("--models", default=",".join(suite.SUITE), show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True,
              help="Runs of each tool (the table shows the fastest).")
def main(models: str, repeat: int) -> None:
    """Print each model's default-preset and ORT seconds and their ratio."""
    click.echo(f"{'model':12} {'samples':>7} {'onnxq s':>8} {'ORT s':>7} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for model in models.split(","):
            entry = suite.SUITE[model]
            if (reason := entry.missing()) is not None:
                click.echo(f"{model:12} skipped ({reason})")
                continue
            fp32 = entry.export(tmp / f"{model}.onnx")
            calib = suite.write_npz_folder(entry.feeds("calib", entry.calib, 0),
                                           tmp / f"{model}-calib")
            seconds = {}
            for tool, options in (("onnxq", {"preset": "default"}), ("ort", None)):
                runs = [quantize_in_child(options, fp32, tmp / f"{model}.{tool}.onnx", calib,
                                          entry.calib) for _ in range(repeat)]
                seconds[tool] = min(run["quantize_s"] for run in runs)
            click.echo(f"{model:12} {entry.calib:7d} {seconds['onnxq']:8.1f} "
                       f"{seconds['ort']:7.1f} {seconds['onnxq'] / seconds['ort']:6.2f}")


if __name__ == "__main__":
    main()
