"""Block-wise 4-bit weights on a GPT-2 decoder with trained weights (``onnxq.models.tiny_gpt``:
built with ``transformers``, trained here on the standard library's docstrings), weight-only,
on ORT CPU: onnxq rows against ORT's MatMulNBitsQuantizer (DEFAULT in QDQ, HQQ in QOperator)
at blocks of 32 and 128, every weight MatMul at 4 bits (the output head too, as ORT's tool
does).  Per row, on held-out docstrings (modules the model never saw): perplexity per byte,
next-token agreement with FP32 and the mean KL divergence of the next-token distribution to
FP32, at ORT's accuracy levels 0 and 4 (GPTQ rows, onnxq's and ORT's, calibrate on 64
windows of the training docstrings); MatMulNBits in ORT's optimized graph; latency (one
thread) for 1 and 128 tokens; quantization seconds.

    pip install "transformers>=4.45"
    python benchmarks/decoder_int4.py --work /tmp/gpt
"""

from __future__ import annotations

import itertools
from pathlib import Path

import click
import numpy as np
import onnx
from blockwise_int4 import CALIBRATION, latency_ms, quantized, session

from onnxq.models import tiny_gpt

COVERAGE = {"": (), ", ORT's coverage": ("Gemm",)}
"""Every weight MatMul/Gemm, or only the MatMuls, as ORT's MatMulNBitsQuantizer takes
(it leaves the GPT-2's Gemms, 8 of its 9 weight layers, float)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def scores(reference: np.ndarray, logits: np.ndarray, ids: np.ndarray) -> tuple[float, ...]:
    """Perplexity per byte, next-token agreement with FP32, mean KL(FP32 || model)."""
    logp, ref = log_softmax(logits[:, :-1]), log_softmax(reference[:, :-1])
    nll = -np.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()
    agree = float(np.mean(logits[:, :-1].argmax(-1) == reference[:, :-1].argmax(-1)))
    kl = float(np.mean(np.sum(np.exp(ref) * (ref - logp), axis=-1)))
    return float(np.exp(nll)), agree, kl


def head_node(fp32: Path) -> str:
    graph = onnx.load(str(fp32)).graph
    return next(n.name for n in graph.node if graph.output[0].name in n.output)


@click.command()
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              default=Path("gpt-bench"), show_default=True)
@click.option("--windows", type=int, default=32, show_default=True,
              help="Held-out windows of 128 bytes scored.")
def main(work: Path, windows: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "gpt.onnx"
    if not fp32.exists():
        tiny_gpt.export(fp32)
    ids = tiny_gpt.held_out_windows(windows, seed=1)
    calib = [{tiny_gpt.INPUT_NAME: w[None]} for w in
             tiny_gpt.windows(tiny_gpt.docstrings(held_out=False), CALIBRATION, seed=7)]
    feed = {tiny_gpt.INPUT_NAME: ids}
    reference = session(fp32).run(None, feed)[0]
    one = {tiny_gpt.INPUT_NAME: ids[:1, :1]}
    many = {tiny_gpt.INPUT_NAME: ids[:1]}
    graph = onnx.load(str(fp32)).graph
    initializers = {t.name for t in graph.initializer}
    weight_matmuls = sum(n.op_type in ("MatMul", "Gemm") and bool(initializers & set(n.input))
                         for n in graph.node)
    head = head_node(fp32)
    ppl = scores(reference, reference, ids)[0]
    print(f"tiny GPT-2 ({tiny_gpt.LAYERS} layers, hidden {tiny_gpt.HIDDEN}, byte vocabulary), "
          f"{windows} held-out windows of {tiny_gpt.SEQ} bytes\n")
    print("| quantizer | block | MatMulNBits | perplexity L0 | perplexity L4 | agreement L0 "
          "| agreement L4 | KL L0 | ms, 1 token | ms, 128 tokens | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| FP32 | - | {weight_matmuls} weight MatMul/Gemm | {ppl:.3f} | {ppl:.3f} | 1 | 1 | 0 "
          f"| {latency_ms(session(fp32), one):.2f} | {latency_ms(session(fp32), many):.2f} | - |",
          flush=True)
    for (cover, exclude), block in itertools.product(COVERAGE.items(), (32, 128)):
        for label, out, result in quantized(fp32, work, block, head, calib, exclude, cover,
                                            ort_rows=not exclude):
            if isinstance(result, str):
                print(f"| {label} | {block} | failed: {result} | | | | | | | | |")
                continue
            seconds, fused = result
            level = {lv: scores(reference, session(out, lv).run(None, feed)[0], ids)
                     for lv in (0, 4)}
            print(f"| {label} | {block} | {fused} | {level[0][0]:.3f} | {level[4][0]:.3f} | "
                  f"{level[0][1]:.3f} | {level[4][1]:.3f} | {level[0][2]:.4f} | "
                  f"{latency_ms(session(out), one):.2f} | "
                  f"{latency_ms(session(out), many):.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
