"""Compare a quantized model with its FP32 original on real data, and time both on ORT."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

from onnxq.errors import OnnxqError
from onnxq.io.data import Feed, check_feed, model_inputs
from onnxq.io.runtime import make_session, open_session, run
from onnxq.progress import Progress
from onnxq.targets.runtimes import TargetRun


@dataclasses.dataclass
class OutputMetrics:
    """Agreement of one model output with FP32."""

    name: str
    sqnr_db: float
    cosine: float


@dataclasses.dataclass
class Comparison:
    """FP32-vs-quantized agreement over a data set (classification fields when they apply)."""

    samples: int
    outputs: list[OutputMetrics]
    top1_agreement: float | None = None
    kl_to_fp32: float | None = None
    top1_fp32: float | None = None
    top1_quantized: float | None = None


class _Accumulator:
    """Streaming sums for SQNR, mean cosine, top-1 and KL of one output."""

    def __init__(self) -> None:
        self.signal = self.noise = self.cosine = self.kl = 0.0
        self.rows = self.agree = 0
        self.correct_ref = self.correct_q = self.labelled = 0
        self.classifier = True

    def update(self, ref: np.ndarray, quant: np.ndarray,
               labels: Sequence[int | None] | None) -> None:
        ref64, q64 = ref.astype(np.float64), quant.astype(np.float64)
        self.signal += float(np.sum(ref64 ** 2))
        self.noise += float(np.sum((ref64 - q64) ** 2))
        r = ref64.reshape(ref64.shape[0], -1) if ref64.ndim > 1 else ref64.reshape(1, -1)
        q = q64.reshape(r.shape)
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(q, axis=1)
        self.cosine += float(np.sum(np.sum(r * q, axis=1) / np.maximum(norms, 1e-30)))
        self.rows += r.shape[0]
        self.classifier = self.classifier and ref.ndim == 2 and ref.shape[1] > 1
        if not self.classifier:
            return
        ref_top, q_top = r.argmax(1), q.argmax(1)
        self.agree += int(np.sum(ref_top == q_top))
        p = _softmax(r)
        self.kl += float(np.sum(p * (np.log(p + 1e-12) - np.log(_softmax(q) + 1e-12))))
        for label, a, b in zip(labels or [], ref_top, q_top, strict=labels is not None):
            if label is not None:
                self.labelled += 1
                self.correct_ref += int(a == label)
                self.correct_q += int(b == label)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compare(fp32: ir.Model, quantized: ir.Model | TargetRun, data: Iterable[Feed],
            labels: Sequence[int | None] | None = None, device: str = "cpu",
            progress: Progress | None = None, total: int | None = None) -> Comparison:
    """Run both models on ``data`` (one sample per feed) and measure agreement, streaming;
    ``quantized`` may be a model loaded on a target's runtime (FP32 runs on ORT)."""
    progress = progress or Progress(quiet=True)
    ref_session = make_session(fp32, device)
    names = [o.name for o in ref_session.get_outputs()]
    if isinstance(quantized, ir.Model):
        q_session = make_session(quantized, device)
        q_names = [o.name for o in q_session.get_outputs()]
        run_quantized = functools.partial(run, q_session, q_names)
    else:
        q_names, run_quantized = quantized.output_names, quantized.infer
    if sorted(names) != sorted(q_names):
        raise OnnxqError("the two models have different outputs; compare a model with its "
                         "own quantized version")
    accumulators = {name: _Accumulator() for name in names}
    inputs = model_inputs(fp32)
    count = 0
    for i, feed in enumerate(progress(data, "validate", total=total)):
        check_feed(feed, inputs, i, role="validation")
        ref_out = run(ref_session, names, feed)
        q_out = run_quantized(feed)  # in the quantized model's own output order
        q_out = [q_out[q_names.index(name)] for name in names]
        batch_labels = [labels[i]] if labels is not None else None
        for name, r, q in zip(names, ref_out, q_out, strict=True):
            if r.shape != q.shape:
                raise OnnxqError(f"output '{name}' has shape {list(q.shape)} in the quantized "
                                 f"model and {list(r.shape)} in FP32; compare a model with "
                                 "its own quantized version")
            accumulators[name].update(r, q, batch_labels)
        count += 1
    if count == 0:
        raise OnnxqError("validation data is empty; pass --data with at least one sample")
    outputs = [OutputMetrics(name, _sqnr(a), a.cosine / a.rows) for name, a in accumulators.items()]
    first = accumulators[names[0]]
    result = Comparison(count, outputs)
    if first.classifier:
        result.top1_agreement = first.agree / first.rows
        result.kl_to_fp32 = first.kl / first.rows
        if first.labelled:
            result.top1_fp32 = first.correct_ref / first.labelled
            result.top1_quantized = first.correct_q / first.labelled
    return result


def _sqnr(a: _Accumulator) -> float:
    return float("inf") if a.noise == 0 else 10.0 * float(np.log10(max(a.signal, 1e-30) / a.noise))


def latency_ms(model: ir.Model | str | TargetRun, feed: Feed, threads: int = 1, runs: int = 50,
               warmup: int = 5) -> float:
    """Median single-batch latency: on ORT CPU with ``threads`` intra-op threads, or on the
    runtime a ``TargetRun`` was loaded on."""
    if isinstance(model, TargetRun):
        infer = model.infer
    else:
        session = (open_session(model, "cpu", threads) if isinstance(model, str)
                   else make_session(model, "cpu", threads=threads))
        infer = functools.partial(run, session, None)
    for _ in range(warmup):
        infer(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        infer(feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))
