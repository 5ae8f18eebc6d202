"""Transformer encoder at 4-bit weights: round-to-nearest vs learned rounding, same settings.

Uses onnxq.models.tiny_bert (token ids, Gather embedding, LayerNorm, softmax attention, GELU)
at opset 17 and opset 14 (decomposed LayerNorm); cosine of the logits to FP32.

    python benchmarks/transformer_rounding.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.models import tiny_bert

ROWS = {"nearest": {"preset": "fast"}, "nearest+BC (preset default)": {"preset": "default"},
        "adaround": {"preset": "fast", "rounding": "adaround"},
        "brecq": {"preset": "fast", "rounding": "brecq"},
        "brecq, learned steps": {"preset": "fast", "rounding": "brecq", "learn_steps": True},
        "qdrop": {"preset": "fast", "rounding": "qdrop"}}


def main() -> None:
    """Print cosine/SQNR/agreement per rounding method and opset."""
    calib, val = tiny_bert.benchmark_splits()
    print(f"{'opset':>5} {'rounding':28} {'cosine':>8} {'SQNR dB':>8} {'agree':>6} {'s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for opset, fp32 in tiny_bert.exports(tmp):
            for row, options in ROWS.items():
                fields = dict(options)
                config = QuantConfig.from_preset(fields.pop("preset"), weights="int4",
                                                 samples=128, min_cosine=-1, **fields)
                out = Path(tmp) / "q.onnx"
                start = time.perf_counter()
                report = quantize(fp32, out, calib, config, quiet=True)
                seconds = time.perf_counter() - start
                r = compare(load_model(fp32), load_model(out), val)
                notes = {b["note"] for b in report.reconstruction if b["note"]}
                print(f"{opset:>5} {row:28} {r.outputs[0].cosine:8.4f} "
                      f"{r.outputs[0].sqnr_db:8.2f} {r.top1_agreement:6.3f} {seconds:6.1f}"
                      + (f"  ({'; '.join(notes)})" if notes else ""))


if __name__ == "__main__":
    main()
