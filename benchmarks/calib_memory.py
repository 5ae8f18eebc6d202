"""Peak RSS of `onnxq quantize` on EfficientNet-Lite0 for several calibration sample counts.

Each run is a fresh process; its peak RSS is read from the kernel.  The shared
ImageNet sample has 500 calib images, so 512 samples means all 500 of them.  Arguments
after ``--`` go to `onnxq quantize` (e.g. learned rounding and its cache budget).

    python benchmarks/calib_memory.py
    python benchmarks/calib_memory.py --samples 64,256,500 -- --weights int4 --rounding brecq \
        --iters 10 --cache-mb 256
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import click

from onnxq.cli.demo import find_imagenet_sample
from onnxq.models.efficientnet_lite import export

CHILD = """
import resource, sys
from onnxq.cli.commands import main
main(sys.argv[1:], standalone_mode=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(args: list[str]) -> float:
    """Run the CLI in a fresh child process and return that process's peak RSS."""
    out = subprocess.run([sys.executable, "-c", CHILD, *args], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


@click.command()
@click.option("--samples", "counts", default="64,512", show_default=True)
@click.argument("extra", nargs=-1)
def main(counts: str, extra: tuple[str, ...]) -> None:
    """Print peak RSS for each sample count."""
    sample = find_imagenet_sample()
    if sample is None:
        print("skipped: ../shared/data/imagenet-sample not found")
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = export(Path(tmp) / "lite0.onnx")
        for samples in counts.split(","):
            rss = peak_rss_mb(["quantize", str(model), "--calib", str(sample / "calib"),
                               "--samples", samples, "-o", str(Path(tmp) / "q.onnx"),
                               "--quiet", *extra])
            print(f"samples {samples:>4}: peak RSS {rss:.0f} MB {' '.join(extra)}")


if __name__ == "__main__":
    main()
