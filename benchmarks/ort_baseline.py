"""ONNX Runtime's own quantizer, configured as the benchmarks compare against it."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path


def ort_quantize_static(fp32: Path, out: Path, calib: Iterable[dict]) -> float:
    """quant_pre_process (when it succeeds), then QDQ, per-channel, MinMax, u8/s8; seconds."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    start = time.perf_counter()
    fp32, out = fp32.resolve(), out.resolve()
    source = out.with_suffix(".pre.onnx")
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        # when its symbolic shape inference fails, quant_pre_process leaves a model and a
        # uuid-named .data file in the working folder: keep them out of the caller's
        try:
            quant_pre_process(str(fp32), str(source))
        except Exception:  # noqa: BLE001 - its symbolic shape inference fails on some exports
            source = fp32
        quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return time.perf_counter() - start
