"""--target, --target-file and --int4-storage on the command line; validate --target."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.io.model_io import load_model
from onnxq.targets.runtimes import missing


def test_the_stored_report_says_which_target_rules_applied(small_cnn, npz, tmp_path):
    out = tmp_path / "trt.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "--target", "tensorrt", "-o", out,
                    "--quiet")
    assert result.exit_code == 0, result.output
    stored = load_model(out).metadata_props
    report = json.loads(stored["onnxq.report"])
    assert report["target"] == "tensorrt"
    assert report["target_rules"]["biases kept float"] == 6
    config = json.loads(stored["onnxq.config"])
    assert config["activations"] == "int8" and config["target"]["quantize_bias"] is False
    summary = invoke("inspect", out).output
    assert "target: tensorrt: " in summary and "biases kept float (6)" in summary


def test_a_bad_target_file_or_type_is_one_error_line(small_cnn, npz, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text("quantize_bias = 'no'\n")
    out = tmp_path / "x.onnx"
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "--target-file", rules,
                                 "-o", out), "entry 'quantize_bias' must be a TOML boolean")
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "--target", "tensorrt",
                                 "--activations", "uint8", "-o", out),
                          "--target tensorrt does not run uint8 activations")
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "--target-file",
                                 tmp_path / "absent.toml", "-o", out), "cannot read")
    assert not out.exists()


def test_int4_storage_packed_on_the_command_line(small_cnn, npz, tmp_path):
    out = tmp_path / "packed.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "--weights", "int4",
                    "--int4-storage", "packed", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(load_model(out).metadata_props["onnxq.report"])
    assert "int4 weights stored in int8 containers" not in report["target_rules"]


@pytest.mark.skipif(missing("openvino-cpu") is not None, reason=str(missing("openvino-cpu")))
def test_validate_on_openvino_reports_precision_accuracy_and_latency(small_cnn, npz, tmp_path):
    out = tmp_path / "ov.onnx"
    assert invoke("quantize", small_cnn, "--calib", npz, "--target", "openvino-cpu", "-o", out,
                  "--quiet").exit_code == 0
    result = invoke("validate", small_cnn, out, "--data", npz, "--target", "openvino-cpu",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert "--target openvino-cpu (OpenVINO CPU plugin" in result.output
    assert "the model follows its rules" in result.output
    assert "Convolution u8 4" in result.output and "FullyConnected u8 1" in result.output
    assert "quantized on openvino-cpu" in result.output


@pytest.mark.skipif(missing("qnn-htp") is not None, reason=str(missing("qnn-htp")))
def test_validate_on_qnn_names_the_broken_rules_of_an_ort_cpu_output(small_cnn, npz, tmp_path):
    out = tmp_path / "cpu.onnx"
    assert invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--quiet").exit_code == 0
    result = invoke("validate", small_cnn, out, "--data", npz, "--target", "qnn-htp", "--quiet")
    assert result.exit_code != 0
    assert "rule(s) broken" in result.output and "dynamic shape" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: qnn-htp")
