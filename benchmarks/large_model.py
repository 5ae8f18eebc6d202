"""A ~3 GB model quantized to block-wise int4, weight-only: time, peak RSS, and the output
loaded and run in ONNX Runtime.

The model is ``onnxq.models.matmul_stack`` at transformer-layer sizes (24 blocks of
2048 -> 8192 -> 2048, float32 weights in external data: 3.2 GB).  ``onnxq quantize`` runs
in a child process; its peak RSS is the kernel's high-water mark for that process (mapped
weight pages included).  The output is then checked here: ORT loads it, MatMulNBits in the
optimized graph against weight MatMuls, output SQNR against FP32 on 4 tokens (the FP32
reference computed a piece at a time), latency for 1 and 128 tokens against FP32.

    python benchmarks/large_model.py --work /tmp/large
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort
from blockwise_int4 import latency_ms, session

from onnxq.io.pieces import run_in_pieces
from onnxq.io.runtime import optimized_op_types
from onnxq.models import matmul_stack

SIZES = {"layers": 24, "hidden": 2048, "ffn": 8192}


def quantize(fp32: Path, out: Path, flags: list[str]) -> tuple[int, str, float, float]:
    """Exit code, last line, seconds and peak RSS (MB) of ``onnxq quantize`` in a child."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxq", "quantize", str(fp32), "-o", str(out),
                           "--quiet", *flags], text=True, capture_output=True, check=False)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, lines[-1] if lines else "", seconds, peak


@click.command()
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/large"),
              show_default=True, help="Folder for the models (4 GB free needed).")
@click.option("--block-size", default=128, show_default=True)
def main(work: Path, block_size: int) -> None:
    """Build the model, quantize it in a child process, check the output; print a table."""
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "stack3g.onnx"
    if not fp32.exists():
        matmul_stack.export(fp32, **SIZES)
    size = sum(p.stat().st_size for p in work.glob("stack3g.onnx*")) / 2**30
    largest = max(int(np.prod(t.dims)) * 4 for t in
                  onnx.load(str(fp32), load_external_data=False).graph.initializer) / 2**20
    out = work / f"stack3g.int4.b{block_size}.onnx"
    code, last, seconds, peak = quantize(
        fp32, out, ["--calib", "none", "--weights", "int4", "--block-size", str(block_size)])
    click.echo(f"model: {size:.2f} GiB of float32 weights, largest tensor {largest:.0f} MiB\n")
    click.echo("| block | exit | quantize s | peak RSS MiB | output MiB | MatMulNBits | "
               "SQNR dB (4 tokens) | ms, 1 token (FP32) | ms, 128 tokens (FP32) |")
    click.echo("|---|---|---|---|---|---|---|---|---|")
    if code != 0:
        click.echo(f"| {block_size} | {code} | {seconds:.1f} | {peak:.0f} | - | {last} | | | |")
        return
    ops = Counter(optimized_op_types(out))
    feeds = matmul_stack.feeds(1, tokens=4, hidden=SIZES["hidden"], seed=3)[0]
    name = onnx.load(str(fp32), load_external_data=False).graph.output[0].name
    ref = run_in_pieces(fp32, feeds)[name].astype(np.float64)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    times = []
    for tokens in (1, 128):
        feed = matmul_stack.feeds(1, tokens=tokens, hidden=SIZES["hidden"], seed=4)[0]
        times.append(f"{latency_ms(session(out), feed, runs=10):.1f} "
                     f"({latency_ms(session(fp32), feed, runs=10):.1f})")
    weights = 2 * SIZES["layers"]
    click.echo(f"| {block_size} | 0 | {seconds:.1f} | {peak:.0f} | "
               f"{sum(p.stat().st_size for p in work.glob(out.name + '*')) / 2**20:.0f} | "
               f"{ops['MatMulNBits']} of {weights} | {sqnr:.2f} | {times[0]} | {times[1]} |")
    click.echo(f"\n{last}")


if __name__ == "__main__":
    main()
