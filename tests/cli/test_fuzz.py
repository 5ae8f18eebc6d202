"""Seeded fuzzing of the command line: mutated models and calibration files through
``quantize``, ``validate`` and ``inspect``.

Every run must end with exit 0 and a model that passes ``onnx.checker`` and runs in ONNX
Runtime, or with a non-zero exit and one ``error:`` line that is a diagnosis (never a
traceback, never the catch-all internal error).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import assert_one_line_error, invoke
from onnx import TensorProto

from onnxq.models import hostile

CASES = 1000
SEED = 20261201
FLAGS = [("--preset", "fast"), ("--preset", "default"), ("--weights", "int4"),
         ("--rounding", "brecq", "--iters", "2"), ("--activations", "uint16")]


def _flip_bytes(rng, data: bytes) -> bytes:
    buf = bytearray(data)
    for i in rng.integers(0, len(buf), int(rng.integers(1, 8))):
        buf[i] = int(rng.integers(0, 256))
    return bytes(buf)


def _model_mutation(rng, model: onnx.ModelProto) -> bytes:
    """One random mutation of ``model``, serialized."""
    graph = model.graph
    kind = int(rng.integers(0, 10))
    if kind == 0:
        return _flip_bytes(rng, model.SerializeToString())
    if kind == 1:
        data = model.SerializeToString()
        return data[: int(rng.integers(1, len(data)))]
    if kind == 2:
        del graph.node[int(rng.integers(0, len(graph.node)))]
    elif kind == 3:
        tensor = graph.initializer[int(rng.integers(0, len(graph.initializer)))]
        tensor.data_type = int(rng.choice([TensorProto.DOUBLE, TensorProto.INT64,
                                           TensorProto.FLOAT16, TensorProto.INT8,
                                           TensorProto.STRING]))
    elif kind == 4:
        del graph.initializer[int(rng.integers(0, len(graph.initializer)))]
    elif kind == 5:
        node = graph.node[int(rng.integers(0, len(graph.node)))]
        node.input[int(rng.integers(0, len(node.input)))] = "missing_tensor"
    elif kind == 6:
        node = graph.node[int(rng.integers(0, len(graph.node)))]
        node.attribute.append(onnx.helper.make_attribute(
            str(rng.choice(["group", "transB", "axis", "pads", "strides"])),
            int(rng.integers(-2, 5)) if rng.random() < 0.5 else [int(v) for v in
                                                                rng.integers(-1, 4, 4)]))
    elif kind == 7:
        dims = graph.input[0].type.tensor_type.shape.dim
        dims[int(rng.integers(0, len(dims)))].dim_value = int(rng.choice([0, 1, 4, 7]))
    elif kind == 8:
        model.opset_import[0].version = int(rng.integers(1, 26))
    else:
        node = graph.node[int(rng.integers(1, len(graph.node)))]
        node.output[0] = graph.node[0].output[0]  # two producers of one name
    return model.SerializeToString()


def _calibration_mutation(rng, path: Path) -> None:
    """A random bad (or odd) calibration file at ``path``."""
    x = hostile.feeds(4)
    kind = int(rng.integers(0, 7))
    if kind == 0:
        np.savez(path, x=x)
        path.write_bytes(_flip_bytes(rng, path.read_bytes()))
    elif kind == 1:
        np.savez(path, x=x.astype(rng.choice([np.float64, np.int32, np.float16])))
    elif kind == 2:
        np.savez(path, x=x[:, :, : int(rng.integers(1, 8))])
    elif kind == 3:
        np.savez(path, x=x, extra=x)
    elif kind == 4:
        np.savez(path, x=x[:0])
    elif kind == 5:
        x.ravel()[rng.integers(0, x.size, 3)] = rng.choice([np.nan, np.inf, -np.inf])
        np.savez(path, x=x)
    else:
        np.savez(path, y=x)


def _assert_good_output(result, out: Path) -> None:
    if result.exit_code != 0:
        assert_one_line_error(result)
        assert not out.exists()
        return
    assert result.exception is None, result.output
    onnx.checker.check_model(onnx.load(out), full_check=True)
    session = ort.InferenceSession(str(out))
    session.run(None, {"x": hostile.feeds(1, seed=9)})


def _check(result) -> None:
    if result.exit_code != 0:
        assert_one_line_error(result)
    else:
        assert result.exception is None, result.output


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    onnx.save(hostile.conv_net(), folder / "base.onnx")
    np.savez(folder / "calib.npz", x=hostile.feeds(8))
    return folder / "base.onnx", folder / "calib.npz"


@pytest.mark.parametrize("case", range(CASES))
def test_fuzzed_inputs_end_well(case, base, tmp_path):
    rng = np.random.default_rng([SEED, case])
    model_path, calib = base
    mutate_model = case % 3 != 2
    if mutate_model:
        model_path = tmp_path / "m.onnx"
        model_path.write_bytes(_model_mutation(rng, hostile.conv_net()))
    else:
        calib = tmp_path / "c.npz"
        _calibration_mutation(rng, calib)
    out = tmp_path / "out.onnx"
    options = FLAGS[case % len(FLAGS)]
    _assert_good_output(invoke("quantize", model_path, "--calib", calib, *options,
                               "--samples", 4, "-o", out, "--quiet"), out)
    _check(invoke("inspect", model_path))
    _check(invoke("validate", base[0], model_path, "--data", calib, "--quiet"))
