"""GPTQ's second-order rounding (``--rounding gptq``): the numerics against round-to-nearest,
and the pass on the tiny BERT's blocked weights."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.io.model_io import load_model
from onnxq.io.runtime import optimized_op_types
from onnxq.models import tiny_bert
from onnxq.numerics.affine import QTYPES, per_element, signed_block_scales
from onnxq.numerics.affine import quantize as rtn
from onnxq.refine.gptq import gptq_round

INT4 = QTYPES["int4"]


def _case(seed: int = 0, k: int = 128, n: int = 48):
    """Correlated inputs (a few dominant directions and an offset, as after LayerNorm or
    ReLU), a weight, and its block-of-32 scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2048, k)) @ (np.eye(k) + rng.standard_normal((k, k)) * 0.3) + 0.5
    w = rng.standard_normal((k, n)) / np.sqrt(k)
    scale = per_element(signed_block_scales(w, 0, 32, INT4), w.shape, 0, 32)
    return x, w, scale.astype(np.float64), np.zeros(w.shape, np.int64)


def _output_error(x, w, q, scale) -> float:
    return float(np.sum((x @ (w - q * scale)) ** 2))


def test_gptq_cuts_the_output_error_of_nearest_rounding():
    for seed in range(3):
        x, w, scale, zero = _case(seed)
        nearest = rtn(w, scale, zero, INT4).astype(np.float64)
        q = gptq_round(w, x.T @ x, scale, zero, INT4)
        assert np.all((q >= INT4.qmin) & (q <= INT4.qmax)) and np.all(q == np.round(q))
        assert _output_error(x, w, q, scale) < 0.6 * _output_error(x, w, nearest, scale)


def test_gptq_with_uncorrelated_inputs_is_nearest_rounding():
    _, w, scale, zero = _case()
    q = gptq_round(w, 7.0 * np.eye(len(w)), scale, zero, INT4)  # no error to feed forward
    np.testing.assert_array_equal(q, rtn(w, scale, zero, INT4))


def _gptq(block: int | None, weights: str = "int4", **flags) -> QuantConfig:
    return QuantConfig.from_preset("fast", weights=weights, activations="none",
                                   bias_correction="none", block_size=block, **flags)


@pytest.mark.parametrize("weights", ["int4", "uint4"])
def test_gptq_blocks_beat_nearest_and_still_fuse(bert17, tmp_path, weights):
    calib, val = tiny_bert.feeds("calib", 64, 1), tiny_bert.feeds("val", 32, 1)
    sqnr = {}
    for rounding in ("nearest", "gptq"):
        out = tmp_path / f"{rounding}.onnx"
        quantize(bert17, out, calib if rounding == "gptq" else None,
                 _gptq(32, weights, rounding=rounding), quiet=True)
        sqnr[rounding] = compare(load_model(bert17), load_model(out), val).outputs[0].sqnr_db
        assert Counter(optimized_op_types(out))["MatMulNBits"] == 9
    assert sqnr["gptq"] > sqnr["nearest"] + 0.5, sqnr


def test_gptq_refusals(bert17, tmp_path):
    with pytest.raises(OnnxqError, match="missing calibration data"):
        quantize(bert17, tmp_path / "q.onnx", None, _gptq(32, rounding="gptq"), quiet=True)
    with pytest.raises(OnnxqError, match="--rounding gptq rounds weights"):
        QuantConfig(weights="int4", rounding="gptq")  # activations quantized
    assert_one_line_error(invoke("quantize", str(bert17), "--calib", "none", "--weights", "int4",
                                 "--rounding", "gptq"), "--rounding gptq rounds weights")


def test_the_cli_runs_gptq_weight_only_on_calibration_data(bert17, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.concatenate(
        [f["input_ids"] for f in tiny_bert.feeds("calib", 16, 1)]))
    out = tmp_path / "gptq.onnx"
    result = invoke("quantize", str(bert17), "--calib", str(calib), "--weights", "int4",
                    "--block-size", "32", "--rounding", "gptq", "-o", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert "GPTQRoundingPass" in model.metadata_props["onnxq.report"]
    assert not [n for n in model.graph if n.op_type == "QuantizeLinear"]  # weight-only
    assert Counter(optimized_op_types(out))["MatMulNBits"] == 9
