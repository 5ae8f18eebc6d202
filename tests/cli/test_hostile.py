"""Hostile and unlucky inputs: external data, odd graphs, bad data, kills, determinism.

Every case ends in a model ONNX Runtime runs close to FP32, or in one ``error:`` line with
a non-zero exit and nothing at the output path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import assert_one_line_error, invoke
from onnx import TensorProto

from onnxq.analysis.output_check import cosine
from onnxq.io.model_io import load_model
from onnxq.models import hostile
from onnxq.numerics.observers import MinMaxObserver

OPENED: list[str] = []
_WATCH = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if _WATCH["on"] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        OPENED.append(os.fspath(args[0]) if not isinstance(args[0], bytes) else args[0].decode())


sys.addaudithook(_audit)


@pytest.fixture
def work(tmp_path) -> Path:
    np.savez(tmp_path / "calib.npz", x=hostile.feeds(8))
    return tmp_path


def _save(work: Path, name: str = "m.onnx", **kwargs) -> Path:
    onnx.save(hostile.conv_net(**kwargs), work / name)
    return work / name


def _external(work: Path, location: str | None = None) -> Path:
    (work / "d").mkdir()
    path = hostile.save_external(hostile.conv_net(), work / "d" / "m.onnx")
    if location is not None:
        hostile.point_external_data(path, location)
    return path


def assert_close_to_fp32(fp32: Path, quantized: Path, floor: float = 0.99,
                         dtype=np.float32) -> None:
    """ORT (default optimizations) runs ``quantized`` within ``floor`` cosine of FP32."""
    x = hostile.feeds(2, seed=7, dtype=dtype)
    ref = ort.InferenceSession(str(fp32)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(quantized)).run(None, {"x": x})[0]
    assert cosine(ref, got) > floor


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused_and_never_read(work, kind,
                                                                         monkeypatch):
    secret = work / "secret.txt"
    secret.write_text("s" * 4096)
    location = {"traversal": "../secret.txt", "absolute": str(secret),
                "symlink": "m.onnx.data"}[kind]
    path = _external(work, location)
    if kind == "symlink":
        (path.parent / "m.onnx.data").unlink()
        os.symlink(secret, path.parent / "m.onnx.data")
    monkeypatch.chdir(path.parent)  # a relative MODEL path: the case that read any file
    OPENED.clear()
    _WATCH["on"] = True
    try:
        result = invoke("quantize", "m.onnx", "--calib", work / "calib.npz", "-o",
                        work / "out.onnx", "--quiet")
    finally:
        _WATCH["on"] = False
    assert_one_line_error(result, "external data", "refused")
    assert not (work / "out.onnx").exists()
    assert not [p for p in OPENED if os.path.realpath(p) == str(secret)]


@pytest.mark.parametrize("from_model_folder", [True, False])
def test_external_data_model_quantizes_from_anywhere(work, from_model_folder, monkeypatch):
    path = _external(work)
    monkeypatch.chdir(path.parent if from_model_folder else work)
    model = "m.onnx" if from_model_folder else "d/m.onnx"
    result = invoke("quantize", model, "--calib", work / "calib.npz", "-o", work / "out.onnx",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert_close_to_fp32(path, work / "out.onnx")


def test_symlinked_data_inside_the_folder_is_followed(work):
    path = _external(work)
    (path.parent / "m.onnx.data").rename(path.parent / "blob.bin")
    os.symlink("blob.bin", path.parent / "m.onnx.data")
    result = invoke("quantize", path, "--calib", work / "calib.npz", "-o", work / "out.onnx")
    assert result.exit_code == 0, result.output


def test_truncated_external_data_is_named(work):
    path = _external(work)
    data = path.parent / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert_one_line_error(invoke("quantize", path, "--calib", work / "calib.npz"), "truncated")


@pytest.mark.parametrize("preset", ["fast", "default"])
def test_initializers_listed_as_inputs_leave_the_inputs(work, preset):
    fp32 = _save(work, weights_as_inputs=True)
    out = work / "out.onnx"
    result = invoke("quantize", fp32, "--calib", work / "calib.npz", "--preset", preset,
                    "-o", out)
    assert result.exit_code == 0, result.output
    assert "onnxruntime" not in result.output and "\x1b[" not in result.output  # no ORT log
    assert [i.name for i in onnx.load(out).graph.input] == ["x"]
    assert_close_to_fp32(fp32, out)


def test_float16_model_keeps_its_interface_and_runs(work):
    fp32 = _save(work, dtype=TensorProto.FLOAT16)
    np.savez(work / "c16.npz", x=hostile.feeds(8, dtype=np.float16))
    out = work / "out.onnx"
    result = invoke("quantize", fp32, "--calib", work / "c16.npz", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 4
    assert_close_to_fp32(fp32, out, dtype=np.float16)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_calibration_inputs_are_rejected(work, value):
    x = hostile.feeds(8)
    x[3, 1, 2, 2] = value
    np.savez(work / "bad.npz", x=x)
    out = work / "out.onnx"
    assert_one_line_error(invoke("quantize", _save(work), "--calib", work / "bad.npz", "-o",
                                 out), "of row 3 of", "holds 1 inf/nan")
    assert not out.exists()


def test_non_finite_activations_never_widen_a_range():
    observer = MinMaxObserver()
    observer.update(np.array([1.0, -2.0, np.inf, np.nan], np.float32))
    observer.update(np.array([-np.inf], np.float32))
    assert (observer.lo, observer.hi, observer.nonfinite) == (-2.0, 1.0, 3)


def test_signed_int4_activations_are_emitted_as_uint4_that_ort_fuses_correctly(work):
    fp32, out = _save(work), work / "out.onnx"
    result = invoke("quantize", fp32, "--calib", work / "calib.npz", "--weights", "int4",
                    "--activations", "int4", "-o", out)
    assert result.exit_code == 0, result.output
    assert "emitting uint4 activations" in result.output
    types = {init.data_type for init in onnx.load(out).graph.initializer
             if init.name.endswith("_zero_point")}
    assert TensorProto.UINT4 in types and TensorProto.INT4 in types  # uint4 acts, int4 weights
    assert_close_to_fp32(fp32, out, floor=0.95)


def test_overflowing_int32_bias_widens_the_weight_scale(work):
    onnx.save(hostile.bias_overflow_net(), work / "m.onnx")
    np.savez(work / "small.npz", x=hostile.feeds(8) * 1e-4)
    out = work / "out.onnx"
    result = invoke("quantize", work / "m.onnx", "--calib", work / "small.npz", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(load_model(out).metadata_props["onnxq.report"])
    assert report["widened_for_bias"] == ["w1"]
    bias = next(t for t in onnx.load(out).graph.initializer if t.name == "b1_quantized")
    assert np.abs(onnx.numpy_helper.to_array(bias)).max() < 2**31 - 1
    x = hostile.feeds(2, seed=7) * 1e-4
    ref = ort.InferenceSession(str(work / "m.onnx")).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert cosine(ref, got) > 0.99  # saturated, the bias 5.0 became 0.088: cosine -0.6


def test_nodes_out_of_order_are_sorted_before_anything_else(work):
    fp32, out = _save(work, reverse_nodes=True), work / "out.onnx"
    result = invoke("quantize", fp32, "--calib", work / "calib.npz", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(load_model(out).metadata_props["onnxq.report"])
    assert report["quantized_weights"] == 3 and not report["float_nodes"]


def test_user_tensor_names_like_emitted_ones_get_fresh_names(work):
    fp32, out = _save(work, bias_name="w1_scale"), work / "out.onnx"
    result = invoke("quantize", fp32, "--calib", work / "calib.npz", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert_close_to_fp32(fp32, out)


def test_far_from_fp32_is_refused_and_nothing_is_written(work):
    fp32, out = _save(work), work / "out.onnx"
    args = ("quantize", fp32, "--calib", work / "calib.npz", "--weights", "int4", "--preset",
            "fast", "-o", out)
    assert_one_line_error(invoke(*args, "--min-cosine", "0.99999"), "far from FP32",
                          "nothing was written")
    assert not out.exists() and not [p for p in work.iterdir() if ".onnxq-" in p.name]
    assert invoke(*args, "--min-cosine", "-1").exit_code == 0 and out.exists()


def test_opset_upgrade_prints_nothing(work):
    result = invoke("quantize", _save(work), "--calib", work / "calib.npz", "--weights", "int4",
                    "-o", work / "out.onnx", "--quiet")
    assert result.exit_code == 0 and result.output.count("\n") == 1, result.output


@pytest.mark.parametrize("args", [
    ("--rounding", "nearest"),
    ("--weights", "int4", "--rounding", "brecq", "--iters", "3"),
])
def test_same_seed_gives_the_same_bytes(work, args):
    outputs = []
    for i in range(2):
        out = work / f"out{i}.onnx"
        result = invoke("quantize", _save(work), "--calib", work / "calib.npz", "--seed", "3",
                        "-o", out, "--quiet", *args)
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def _npz_not_zip(path: Path) -> None:
    path.write_text("hello")


def _npz_objects(path: Path) -> None:
    np.savez(path, x=np.array([{"a": 1}], dtype=object))


def _npz_scalar(path: Path) -> None:
    np.savez(path, x=np.float32(1.0))


def _jpeg_truncated(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(path.with_suffix(".jpg"))
    path.with_suffix(".jpg").write_bytes(path.with_suffix(".jpg").read_bytes()[:200])


def _jpeg_text(path: Path) -> None:
    path.with_suffix(".jpg").write_text("not an image")


def _png_bomb(path: Path) -> None:
    from PIL import Image

    Image.new("L", (20000, 20000)).save(path.with_suffix(".png"), optimize=True)


@pytest.mark.parametrize("make, needle", [
    (_npz_not_zip, "not an .npz file"),
    (_npz_objects, "object arrays are not loaded"),
    (_npz_scalar, "scalars"),
])
def test_bad_npz_files_are_diagnosed(work, make, needle):
    make(work / "bad.npz")
    assert_one_line_error(invoke("quantize", _save(work), "--calib", work / "bad.npz"), needle)


@pytest.mark.parametrize("make, needle", [
    (_jpeg_truncated, "Truncated"),
    (_jpeg_text, "cannot identify"),
    (_png_bomb, "decompression bomb"),
])
def test_bad_images_are_diagnosed(work, make, needle):
    (work / "img").mkdir()
    make(work / "img" / "0_a")
    assert_one_line_error(invoke("quantize", _save(work), "--calib", work / "img", "--size", 8),
                          "cannot read image", needle)


@pytest.mark.parametrize("args, needle", [
    (("--seed", "-1"), "--seed must be 0 or more"),
    (("--mean", "1,2"), "--mean takes one number or three"),
    (("--std", "0"), "--std must be positive"),
    (("--activations", "uint4"), "needs --weights int4"),
    (("--min-cosine", "2"), "--min-cosine must lie in"),
    (("--weights", "int3"), "Invalid value for '--weights'"),
    (("-o", "/proc/out.onnx"), "cannot write /proc/out.onnx"),
])
def test_bad_options_are_one_line(work, args, needle):
    assert_one_line_error(invoke("quantize", _save(work), "--calib", work / "calib.npz", *args),
                          needle)


def test_folders_for_files_are_one_line(work):
    (work / "outdir").mkdir()
    assert_one_line_error(invoke("quantize", _save(work), "--calib", work / "calib.npz", "-o",
                                 work / "outdir"), "is a directory")
    assert_one_line_error(invoke("quantize", work, "--calib", work / "calib.npz"),
                          "is a directory")


def test_huge_declared_input_is_diagnosed(work):
    model = hostile.conv_net()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**12
    onnx.save(model, work / "m.onnx")
    assert_one_line_error(invoke("quantize", work / "m.onnx", "--calib", "random"),
                          "too large for random data")


def test_run_time_allocation_failure_is_one_line(work):
    onnx.save(hostile.huge_runtime_net(), work / "m.onnx")
    assert_one_line_error(invoke("quantize", work / "m.onnx", "--calib", work / "calib.npz"),
                          "ONNX Runtime failed running the model")


def test_checker_failure_is_named(work):
    model = hostile.conv_net()
    model.graph.node[1].input[0] = "undefined_tensor"
    onnx.save(model, work / "m.onnx")
    assert_one_line_error(invoke("quantize", work / "m.onnx", "--calib", work / "calib.npz"),
                          "fails the ONNX checker")


def test_validate_with_mismatched_model_or_data(work):
    fp32 = _save(work)
    np.savez(work / "small.npz", x=np.zeros((2, 3, 5, 5), np.float32))
    assert_one_line_error(invoke("validate", fp32, fp32, "--data", work / "small.npz"),
                          "validation input 'x' has shape [1, 3, 5, 5]")
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 2] y) {
        p = GlobalAveragePool (x)
        f = Flatten (p)
        y = Slice (f, st, en, ax)
    }
    """
    other = onnx.parser.parse_model(text)
    other.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([v], np.int64), n)
                                    for n, v in (("st", 0), ("en", 2), ("ax", 1))])
    onnx.save(other, work / "other.onnx")
    assert_one_line_error(invoke("validate", fp32, work / "other.onnx", "--data",
                                 work / "calib.npz"), "output 'y' has shape")


def _spawn(work: Path, *args: str, tmpdir: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-m", "onnxq", *args], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, seconds: float = 120.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def slow_job(work, small_cnn):
    """Arguments of a learned-rounding run that spills every cache to temporary files."""
    from onnxq.models.synthetic import image_feeds

    np.savez(work / "img.npz", image=np.concatenate([f["image"] for f in image_feeds(64)]))
    (work / "tmp").mkdir()
    return ["quantize", str(small_cnn), "--calib", "img.npz", "--weights", "int4",
            "--rounding", "brecq", "--iters", "2000", "--cache-mb", "0", "-o", "out.onnx",
            "--quiet"]


def test_sigterm_removes_every_temporary_file(work, slow_job):
    proc = _spawn(work, *slow_job, tmpdir=work / "tmp")
    assert _wait_for(lambda: any((work / "tmp").glob("onnxq-*-samples-*/*.bin")))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1].startswith("error: termin")
    assert not list((work / "tmp").glob("onnxq-*")) and not (work / "out.onnx").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".onnxq-")]


def test_a_later_run_removes_what_sigkill_left(work, slow_job):
    proc = _spawn(work, *slow_job, tmpdir=work / "tmp")
    assert _wait_for(lambda: any((work / "tmp").glob("onnxq-*-samples-*/*.bin")))
    proc.kill()
    proc.communicate(timeout=60)
    assert list((work / "tmp").glob("onnxq-*"))  # SIGKILL cannot be caught: files stay
    quick = [*slow_job[:8], "--iters", "1", "--cache-mb", "0", "-o", "again.onnx"]
    again = _spawn(work, *quick, tmpdir=work / "tmp")
    again.communicate(timeout=300)
    assert again.returncode == 0
    assert not list((work / "tmp").glob("onnxq-*"))


@pytest.fixture
def varying_sizes(work) -> Path:
    """A folder of one-sample .npz files, every image of another size."""
    folder = work / "sizes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(8, 8), (9, 12), (16, 7), (5, 5), (11, 20), (8, 9)]):
        np.savez(folder / f"{i}.npz", x=rng.standard_normal((3, h, w)).astype(np.float32))
    return folder


@pytest.mark.parametrize("args", [("--preset", "fast"), ("--preset", "default"),
                                  ("--bias-correction", "analytic")])
def test_samples_of_every_size_run_through_each_preset(work, varying_sizes, args):
    fp32, out = _save(work, dynamic_size=True), work / "out.onnx"
    result = invoke("quantize", fp32, "--calib", varying_sizes, "-o", out, "--quiet", *args)
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(3).standard_normal((1, 3, 13, 6)).astype(np.float32)
    ref = ort.InferenceSession(str(fp32)).run(None, {"x": x})[0]
    assert cosine(ref, ort.InferenceSession(str(out)).run(None, {"x": x})[0]) > 0.99
    validated = invoke("validate", fp32, out, "--data", varying_sizes, "--quiet")
    assert validated.exit_code == 0 and "6 samples" in validated.output, validated.output


def test_learned_rounding_on_samples_of_every_size_is_one_line(work, varying_sizes):
    result = invoke("quantize", _save(work, dynamic_size=True), "--calib", varying_sizes,
                    "--rounding", "brecq", "-o", work / "out.onnx")
    assert_one_line_error(result, "same-shaped samples")


def test_stale_folders_of_dead_runs_beside_the_output_are_removed(work):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = work / f".onnxq-{dead.pid}-write-abc"
    stale.mkdir()
    (stale / "out.onnx.data").write_bytes(b"0" * 1000)  # what a SIGKILL mid-write leaves
    mine = work / f".onnxq-{os.getpid()}-write-abc"  # a live run's folder stays
    mine.mkdir()
    result = invoke("quantize", _save(work), "--calib", work / "calib.npz", "-o",
                    work / "out.onnx", "--quiet")
    assert result.exit_code == 0 and not stale.exists() and mine.exists()
