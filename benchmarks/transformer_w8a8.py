"""Transformer-style encoder W8A8: onnxq vs ORT's quantize_static, cosine of logits to FP32.

Uses the tiny BERT-style encoder from onnxq.models.tiny_bert (token-id input, Gather
embedding, LayerNorm, softmax attention, GELU), exported at opset 17 (fused
LayerNormalization) and opset 14 (decomposed LayerNorm).

    python benchmarks/transformer_w8a8.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.models import tiny_bert

sys.path.insert(0, str(Path(__file__).parent))
from ort_baseline import ort_quantize_static


def main() -> None:
    """Print cosine/SQNR/agreement of both tools at each opset."""
    calib, val = tiny_bert.benchmark_splits()
    print(f"{'opset':>5} {'tool':22} {'cosine':>8} {'SQNR dB':>8} {'top-1 agree':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for opset, fp32 in tiny_bert.exports(tmp):
            ours, theirs = Path(tmp) / f"ours{opset}.onnx", Path(tmp) / f"ort{opset}.onnx"
            quantize(fp32, ours, calib, QuantConfig(samples=128), quiet=True)
            ort_quantize_static(fp32, theirs, calib)
            for name, path in (("onnxq", ours), ("ort quantize_static", theirs)):
                r = compare(load_model(fp32), load_model(path), val)
                print(f"{opset:>5} {name:22} {r.outputs[0].cosine:8.4f} "
                      f"{r.outputs[0].sqnr_db:8.2f} {r.top1_agreement:11.3f}")


if __name__ == "__main__":
    main()
