"""CLI paths, including every bad-input case: one line, exit code != 0, nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.io.model_io import load_model
from onnxq.models import suite, tiny_bert


@pytest.fixture
def image_dir(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}_x.png")
    return folder


def test_quantize_with_npz_then_inspect_and_validate(small_cnn, npz, tmp_path):
    out = tmp_path / "cnn.q.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert out.exists() and "activations quantized" in result.output
    inspected = invoke("inspect", out)
    assert inspected.exit_code == 0
    assert "QuantizeLinear" in inspected.output and "ReduceMean" in inspected.output
    validated = invoke("validate", small_cnn, out, "--data", npz, "--quiet")
    assert validated.exit_code == 0, validated.output
    assert "SQNR" in validated.output and "latency" in validated.output


def test_default_output_name_sits_next_to_input(small_cnn, npz, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(small_cnn.read_bytes())
    assert invoke("quantize", model, "--calib", npz, "--quiet").exit_code == 0
    assert (tmp_path / "m.int8.onnx").exists()


def test_image_folder_with_preprocessing_options(small_cnn, image_dir, tmp_path):
    out = tmp_path / "img.onnx"
    result = invoke("quantize", small_cnn, "--calib", image_dir, "--size", 32, "--mean",
                    "123.7,116.3,103.5", "--std", "58.4,57.1,57.4", "--bgr", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output


def test_npz_folder_with_integer_token_inputs(bert17, tmp_path):
    folder = suite.write_npz_folder(tiny_bert.token_batches(6), tmp_path / "tokens")
    result = invoke("quantize", bert17, "--calib", folder, "-o", tmp_path / "b.onnx", "--quiet")
    assert result.exit_code == 0, result.output


def test_random_calibration_warns(small_cnn, tmp_path):
    result = invoke("quantize", small_cnn, "--calib", "random", "--samples", 2,
                    "-o", tmp_path / "r.onnx", "--quiet")
    assert result.exit_code == 0
    assert "warning: calibrating on random data" in result.output


def test_missing_model(tmp_path, npz):
    assert_one_line_error(invoke("quantize", tmp_path / "nope.onnx", "--calib", npz), "not found")


def test_not_onnx_file(tmp_path, npz):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf\n" * 10)
    assert_one_line_error(invoke("quantize", bad, "--calib", npz), "not a readable ONNX")


def test_corrupt_onnx(small_cnn, tmp_path, npz):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(small_cnn.read_bytes()[: small_cnn.stat().st_size // 2])
    assert_one_line_error(invoke("quantize", cut, "--calib", npz), "ONNX")


def test_missing_calibration(small_cnn):
    assert_one_line_error(invoke("quantize", small_cnn), "missing calibration data")


def test_calibration_path_missing(small_cnn, tmp_path):
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", tmp_path / "none"), "not found")


def test_empty_calibration_folder(small_cnn, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", empty), "empty")


@pytest.mark.parametrize("arrays, needle", [
    ({"wrong": np.zeros((2, 3, 32, 32), np.float32)}, "expects ['image']"),
    ({"image": np.zeros((2, 3, 32, 32), np.float64)}, "dtype float64"),
    ({"image": np.zeros((2, 3, 16, 16), np.float32)}, "shape [1, 3, 16, 16]"),
])
def test_mismatched_calibration_data(small_cnn, tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    out = tmp_path / "out.onnx"
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", path, "-o", out), needle)
    assert not out.exists()


def test_output_equal_to_input_is_refused(small_cnn, npz):
    before = small_cnn.read_bytes()
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "-o", small_cnn),
                          "is the input model")
    assert small_cnn.read_bytes() == before


def test_unwritable_output_folder(small_cnn, npz, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    # root may write anywhere, so the permission answer is simulated
    monkeypatch.setattr("onnxq.io.model_io.os.access", lambda path, mode: Path(path) != locked)
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "-o", locked / "x.onnx"),
                          "not writable")
    assert not any(locked.iterdir())


def test_missing_output_folder(small_cnn, npz, tmp_path):
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "-o",
                                 tmp_path / "no" / "x.onnx"), "does not exist")


def test_op_ort_cannot_run_is_a_clear_error(tmp_path, npz):
    import onnx

    text = """
    <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
    g (float[N, 3, 32, 32] image) => (float y) {
        c = Conv <pads = [1, 1, 1, 1]> (image, w)
        r = Relu (c)
        s = Softplus (r)
        y = custom.Mystery (s)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.ones((4, 3, 3, 3), np.float32), "w"))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    result = invoke("quantize", path, "--calib", npz, "-o", tmp_path / "c.q.onnx", "--quiet")
    assert_one_line_error(result, "ONNX Runtime cannot load the model", "Mystery")


def test_op_without_quantized_kernel_is_quantized_around_and_reported(tmp_path, npz):
    import onnx

    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 32, 32] image) => (float y) {
        c = Conv <pads = [1, 1, 1, 1]> (image, w)
        s = Softplus (c)
        y = Conv (s, w2)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
        onnx.numpy_helper.from_array(np.ones((2, 4, 1, 1), np.float32), "w2")])
    path = tmp_path / "softplus.onnx"
    onnx.save(model, path)
    result = invoke("quantize", path, "--calib", npz, "-o", tmp_path / "s.q.onnx", "--quiet")
    assert result.exit_code == 0, result.output
    summary = invoke("inspect", tmp_path / "s.q.onnx").output
    assert "no quantized kernel for Softplus: runs in float" in summary
    assert "quantized compute nodes: 2 of 2" in summary


def test_learned_rounding_from_the_command_line(small_cnn, npz, tmp_path):
    out = tmp_path / "brecq.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "--weights", "int4", "--rounding",
                    "brecq", "--iters", 5, "--preset", "fast", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(load_model(out).metadata_props["onnxq.report"])
    assert "LearnedRoundingPass" in report["passes"] and report["reconstruction"]
    assert json.loads(load_model(out).metadata_props["onnxq.config"])["rounding"] == "brecq"


def test_bad_iteration_count(small_cnn, npz, tmp_path):
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "--rounding", "brecq",
                                 "--iters", 0, "-o", tmp_path / "x.onnx"), "--iters")


def test_fisher_loss_needs_block_reconstruction(small_cnn, npz, tmp_path):
    assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "--rounding",
                                 "adaround", "--loss", "fisher", "-o", tmp_path / "x.onnx"),
                          "--loss fisher")


def test_weight_only_without_calibration_data(small_cnn, tmp_path):
    out = tmp_path / "w4.onnx"
    result = invoke("quantize", small_cnn, "--calib", "none", "--weights", "int4", "-o", out,
                    "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(load_model(out).metadata_props["onnxq.report"])
    assert "PreCalibrateWeightsPass" in report["passes"] and report["quantized_activations"] == 0
