"""EfficientNet-Lite0 on the real ImageNet sample (skipped when ../shared/data is absent)."""

import pytest

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.data import ImageFolder
from onnxq.io.model_io import load_model
from onnxq.io.runtime import optimized_op_types
from onnxq.models.efficientnet_lite import INPUT_NAME, PREPROCESS


@pytest.fixture(scope="module")
def data(imagenet_sample):
    calib = ImageFolder(imagenet_sample / "calib", INPUT_NAME, PREPROCESS, samples=64, seed=0)
    val = ImageFolder(imagenet_sample / "val", INPUT_NAME, PREPROCESS, samples=120, seed=0)
    return calib, val


@pytest.fixture(scope="module")
def results(lite0, data, tmp_path_factory):
    calib, val = data
    out = {}
    reference = load_model(lite0)
    for correction in ("none", "empirical"):
        path = tmp_path_factory.mktemp("q") / f"lite0.bc{correction}.onnx"
        quantize(lite0, path, calib, QuantConfig(samples=64, bias_correction=correction),
                 quiet=True)
        out[correction] = (path, compare(reference, load_model(path), val, labels=val.labels))
    return out


def test_w8a8_agrees_with_fp32_and_every_conv_runs_int8(results):
    path, result = results["empirical"]
    assert result.top1_agreement >= 0.97
    assert result.top1_quantized >= result.top1_fp32 - 0.03
    ops = optimized_op_types(path)
    assert ops.count("QLinearConv") == 49 and ops.count("Conv") == 0


def test_bias_correction_reduces_error_on_real_images(results):
    without, with_correction = results["none"][1], results["empirical"][1]
    assert with_correction.kl_to_fp32 < 0.8 * without.kl_to_fp32
    assert with_correction.outputs[0].sqnr_db > without.outputs[0].sqnr_db + 1.0


@pytest.fixture(scope="module")
def int4_results(lite0_bn, data, tmp_path_factory):
    calib, val = data
    reference = load_model(lite0_bn)
    out = {}
    for name, passes in {"fast": {}, "analytic": {"bias_correction": "analytic"},
                         "default": None}.items():
        # min_cosine=-1: these baselines are meant to be far from FP32 (the check refuses them)
        config = (QuantConfig(weights="int4", samples=64, min_cosine=-1) if passes is None else
                  QuantConfig.from_preset("fast", weights="int4", samples=64, min_cosine=-1,
                                          **passes))
        path = tmp_path_factory.mktemp("q4") / f"{name}.onnx"
        quantize(lite0_bn, path, calib, config, quiet=True)
        out[name] = compare(reference, load_model(path), val, labels=val.labels)
    return out


def test_w4a8_default_preset_rescues_round_to_nearest(int4_results):
    fast, default = int4_results["fast"], int4_results["default"]
    assert fast.top1_agreement < 0.3  # plain 4-bit round-to-nearest collapses
    assert default.top1_agreement > 0.5 and default.kl_to_fp32 < 0.3 * fast.kl_to_fp32


def test_analytic_bias_correction_needs_no_data_and_helps(int4_results):
    assert int4_results["analytic"].kl_to_fp32 < 0.8 * int4_results["fast"].kl_to_fp32
