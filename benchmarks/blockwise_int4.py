"""Block-wise 4-bit weights, weight-only, on ORT CPU: onnxq (int4 and uint4 with zero
points; round-to-nearest and mean-preserving rounding) against ORT's MatMulNBitsQuantizer
(DEFAULT in QDQ, HQQ in QOperator) at blocks of 32 and 128, on a residual MLP stack of
transformer size (``onnxq.models.matmul_stack``), the tiny BERT, and the tiny BERT at HQQ's
coverage (its attention Gemms and embedding tables float, as HQQ leaves them).  Per row: MatMulNBits
in ORT's optimized graph against weight MatMuls, output SQNR against FP32 at ORT's
accuracy levels 0 and 4 (the GPTQ rows, onnxq's and ORT's, calibrate on 64 tiny-BERT batches
or 16 stack inputs of 128 tokens), latency (one thread) for 1 and 128 tokens (the tiny BERT: its
32-token input), quantization seconds.

    python benchmarks/blockwise_int4.py --work /tmp/blocks
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort

from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.runtime import ORT_ERRORS, optimized_op_types
from onnxq.models import matmul_stack, tiny_bert
from onnxq.plan.overrides import parse_overrides

LEVEL_KEY = "session.qdq_matmulnbits_accuracy_level"
CALIBRATION = 64
"""Calibration samples of the GPTQ rows (onnxq's and ORT's)."""


def session(path: Path, level: int | None = None, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if level is not None:
        options.add_session_config_entry(LEVEL_KEY, str(level))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sqnr_db(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    noise = sum(float(np.sum((r.astype(np.float64) - g) ** 2))
                for r, g in zip(reference, got, strict=True))
    return 10 * np.log10(signal / noise)


def latency_ms(sess: ort.InferenceSession, feed: dict, runs: int = 30) -> float:
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - began)
    return 1000 * float(np.median(times))


def ort_quantize(fp32: Path, out: Path, algo: str, block: int) -> None:
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if algo == "DEFAULT":
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True,
                                                    quant_format=QuantFormat.QDQ)
    else:
        config = nbits.HQQWeightOnlyQuantConfig(block_size=block)
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(fp32), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


ROUNDINGS = ("nearest", "mean-preserving", "gptq")


def onnxq_quantize(fp32: Path, out: Path, block: int, head: str, weights: str, rounding: str,
                   exclude: tuple[str, ...], calib: list[dict]) -> None:
    """Weight-only blocks, the head at 4 bits too (as ORT's tool quantizes every MatMul);
    ``rounding``: nearest, mean-preserving in every block (pre-calibration), or GPTQ on
    ``calib``."""
    rules = parse_overrides(f'[[override]]\nnode = "{head}"\nweights = "{weights}"\n'
                            'granularity = "per-block"\n', "head.toml")
    gptq = rounding == "gptq"
    quantize(fp32, out, calib if gptq else None, QuantConfig.from_preset(
        "fast", weights=weights, activations="none", bias_correction="none",
        block_size=block, precalibrate=rounding == "mean-preserving",
        rounding="gptq" if gptq else "nearest", overrides=rules, exclude=exclude), quiet=True)


def ort_gptq(fp32: Path, out: Path, block: int, calib: list[dict]) -> None:
    """ORT's MatMulNBitsQuantizer with its GPTQ (QOperator only), on the same windows."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calib)

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    config = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(),
                                             block_size=block)
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(fp32), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


def quantized(fp32: Path, work: Path, block: int, head: str, calib: list[dict],
              exclude: tuple[str, ...] = (), suffix: str = "", ort_rows: bool = True
              ) -> Iterator[tuple[str, Path, tuple[float, int] | str]]:
    """Each quantizer's label (onnxq's rows, with ``suffix``, then ORT's when ``ort_rows``),
    its output at blocks of ``block``, and its quantization seconds and MatMulNBits count in
    ORT's optimized graph, or why it failed (a tool failing is a result)."""
    makers = {
        f"onnxq {weights} {rounding}{suffix}": lambda out, w=weights, r=rounding:
            onnxq_quantize(fp32, out, block, head, w, r, exclude, calib)
        for weights in ("int4", "uint4") for rounding in ROUNDINGS}
    if ort_rows:
        makers |= {
            "ORT DEFAULT (QDQ)": lambda out: ort_quantize(fp32, out, "DEFAULT", block),
            "ORT HQQ (QOperator)": lambda out: ort_quantize(fp32, out, "HQQ", block),
            "ORT GPTQ (QOperator)": lambda out: ort_gptq(fp32, out, block, calib),
        }
    for label, make in makers.items():
        tag = "".join(label.split()[:3]).replace("(", "").replace(")", "")
        out = work / f"{fp32.stem}{'.cover' if exclude else ''}.{tag}.b{block}.onnx"
        began = time.perf_counter()
        try:
            make(out)
            seconds = time.perf_counter() - began
            yield label, out, (seconds, Counter(optimized_op_types(out))["MatMulNBits"])
        except (*ORT_ERRORS, ValueError) as exc:
            yield label, out, str(exc).splitlines()[0][:120]


def rows_for(name: str, fp32: Path, head: str, feeds: list[dict], one: dict,
             many: dict | None, work: Path, calib: list[dict],
             exclude: tuple[str, ...] = ()) -> list[str]:
    reference = [session(fp32).run(None, f)[0] for f in feeds]
    weight_matmuls = sum(n.op_type in ("MatMul", "Gemm") and any(
        i in {t.name for t in onnx.load(fp32).graph.initializer} for i in n.input)
        for n in onnx.load(fp32).graph.node)
    fp32_times = (latency_ms(session(fp32), one),
                  latency_ms(session(fp32), many) if many else None)
    lines = [(f"| {name} | FP32 | - | {weight_matmuls} weight MatMul/Gemm | - | - | "
             f"{fp32_times[0]:.2f} | {_ms(fp32_times[1])} | - |")]
    for block in (32, 128):
        for label, out, result in quantized(fp32, work, block, head, calib, exclude):
            if isinstance(result, str):
                lines.append(f"| {name} | {label} | {block} | failed: {result} | | | | | |")
                continue
            seconds, fused = result
            levels = [sqnr_db(reference, [session(out, level).run(None, f)[0] for f in feeds])
                      for level in (0, 4)]
            times = (latency_ms(session(out), one),
                     latency_ms(session(out), many) if many else None)
            lines.append(f"| {name} | {label} | {block} | {fused} | {levels[0]:.2f} | "
                         f"{levels[1]:.2f} | {times[0]:.2f} | {_ms(times[1])} | "
                         f"{seconds:.1f} |")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@click.command()
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              default=Path("blocks-bench"), show_default=True)
@click.option("--layers", type=int, default=4, show_default=True,
              help="Residual MLP blocks of the stack (1024 x 4096 each).")
@click.option("--models", default="stack,bert,bert-hqq-coverage", show_default=True)
def main(work: Path, layers: int, models: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    stack = matmul_stack.export(work / "stack.onnx", layers=layers)
    bert = tiny_bert.export(work / "bert.onnx", opset=17)
    print("| model | quantizer | block | MatMulNBits | SQNR level 0 (dB) | SQNR level 4 (dB) "
          "| ms, 1 token (BERT: 32) | ms, 128 tokens | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|")
    selected = models.split(",")
    if "stack" in selected:
        for line in rows_for(f"MLP stack ({layers} x 1024x4096)", stack,
                             f"/layers.{layers - 1}/down/MatMul",
                             matmul_stack.feeds(8, seed=1), matmul_stack.feeds(1, 1)[0],
                             matmul_stack.feeds(1, 128)[0], work,
                             matmul_stack.feeds(CALIBRATION // 4, seed=2)):
            print(line, flush=True)
    for key, label, exclude in (("bert", "tiny BERT", ()),
                                ("bert-hqq-coverage", "tiny BERT, HQQ's coverage",
                                 ("Gemm", "Gather"))):
        if key not in selected:
            continue
        for line in rows_for(label, bert, "/head/Gemm", tiny_bert.feeds("val", 32, 1),
                             tiny_bert.feeds("val", 1, 2)[0], None, work,
                             tiny_bert.feeds("calib", CALIBRATION, 1), exclude):
            print(line, flush=True)


if __name__ == "__main__":
    main()
