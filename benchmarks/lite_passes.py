"""Pass ablation on EfficientNet-Lite (BatchNorm left in the export): W8A8 and W4A8.

Rows: none / +fusion / +CLE / +bias correction / +range refinement / all, plus the
presets and data-free analytic bias correction.  Calibrates on ``calib/``, scores on
``val/`` of ../shared/data/imagenet-sample (skips when absent).

    python benchmarks/lite_passes.py --model lite0 --json lite0_passes.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import onnx_ir as ir

from onnxq.analysis.validate import compare
from onnxq.config import QuantConfig
from onnxq.io.data import ImageFolder
from onnxq.io.model_io import load_model
from onnxq.models.efficientnet_lite import INPUT_NAME, VARIANTS, export, preprocess
from onnxq.pipeline import quantize_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"
NONE = {"fuse": False, "equalize": "none", "bias_correction": "none", "refine_ranges": False}
FAST = {**NONE, "fuse": True}
ROWS = {
    "none": NONE,
    "+fusion (preset fast)": FAST,
    "+CLE (exact)": {**FAST, "equalize": "exact"},
    "+bias correction": {**FAST, "bias_correction": "empirical"},
    "+range refinement": {**FAST, "refine_ranges": True},
    "all": {**FAST, "equalize": "exact", "bias_correction": "empirical",
            "refine_ranges": True},
    "preset default": QuantConfig.from_preset("default").__dict__,
    "+analytic BC (data-free)": {**FAST, "bias_correction": "analytic"},
}
PASS_FIELDS = tuple(NONE)


@click.command()
@click.option("--model", "variant", type=click.Choice(list(VARIANTS)), default="lite0",
              show_default=True)
@click.option("--samples", default=256, show_default=True)
@click.option("--weights", "weight_types", multiple=True, default=("int8", "int4"),
              show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def main(variant: str, samples: int, weight_types: tuple[str, ...], json_path: str | None):
    """Run every ablation row and print one table per weight type."""
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} not found")
        return
    prep = preprocess(variant)
    calib = list(ImageFolder(DATA / "calib", INPUT_NAME, prep, samples=samples, seed=0))
    val_folder = ImageFolder(DATA / "val", INPUT_NAME, prep)
    val, labels = list(val_folder), val_folder.labels
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(Path(tmp) / f"{variant}.onnx", variant=variant, keep_batchnorm=True)
        reference = load_model(fp32)
        for weights in weight_types:
            click.echo(f"\n{variant} W{weights[3:]}A8, {len(calib)} calibration images, "
                       f"{len(val)} val images")
            click.echo(f"{'row':28} {'top1':>6} {'agree':>6} {'KL':>9} {'quant s':>8}")
            for row, fields in ROWS.items():
                passes = {k: fields[k] for k in PASS_FIELDS}
                config = QuantConfig(weights=weights, samples=samples, **passes)
                model = ir.load(str(fp32))
                start = time.perf_counter()
                report = quantize_model(model, calib, config, total=len(calib))
                seconds = time.perf_counter() - start
                result = compare(reference, model, val, labels)
                results.append({"model": variant, "weights": weights, "row": row, **passes,
                                "top1": result.top1_quantized, "fp32_top1": result.top1_fp32,
                                "agreement": result.top1_agreement, "kl": result.kl_to_fp32,
                                "seconds": seconds, "passes": report.passes})
                click.echo(f"{row:28} {result.top1_quantized:6.3f} {result.top1_agreement:6.3f} "
                           f"{result.kl_to_fp32:9.5f} {seconds:8.1f}")
        click.echo(f"FP32 top-1 {results[0]['fp32_top1']:.3f}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
