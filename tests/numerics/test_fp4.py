"""The fp4 (E2M1) weight grid: numpy Q/DQ against the ONNX reference, what the non-uniform
grid buys over int4, learned rounding between its neighbours, and an fp4 model written for
OpenVINO (the runtime that executes it) and refused where no runtime does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.models.synthetic import image_feeds
from onnxq.numerics.affine import (
    QTYPES,
    choose_qparams,
    dequantize,
    fake_quantize,
    mse_weight_ranges,
    sqnr_db,
)
from onnxq.numerics.affine import quantize as quantize_array
from onnxq.plan.qparams import QParams
from onnxq.refine.rounding.torch_block import LearnedRoundingWeight
from onnxq.targets.profile import load_target
from onnxq.targets.runtimes import load_on, missing

FP4 = QTYPES["fp4"]
LEVELS = sorted(set(FP4.levels))


def _channels(rng: np.random.Generator, draw: str = "laplace") -> np.ndarray:
    return (getattr(rng, draw)(size=(16, 72)) * rng.uniform(0.1, 2, (16, 1))).astype(np.float32)


def test_fp4_quantize_and_dequantize_are_the_onnx_references():
    rng = np.random.default_rng(0)
    w = _channels(rng)
    scale = (np.abs(w).max(axis=1) / 7).astype(np.float32)  # the largest saturate at 6
    scale[0] = 0.25  # a power of two: the ties below are exact
    w[0, :8] = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -5], np.float32) * scale[0]
    q = quantize_array(w, scale, np.zeros(16, np.int64), FP4, axis=0)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], axis=0,
                          output_dtype=onnx.TensorProto.FLOAT4E2M1),
         helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=0)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, w.shape)],
        [helper.make_tensor_value_info("q", onnx.TensorProto.FLOAT4E2M1, w.shape),
         helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, w.shape)],
        [numpy_helper.from_array(scale, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=11)
    ref_q, ref_y = ReferenceEvaluator(model).run(None, {"x": w})
    np.testing.assert_array_equal(q, ref_q.astype(np.float32))
    np.testing.assert_array_equal(q[0, :8], [0, 1, 1, 2, 2, 4, 4, -4])  # ties: even mantissa
    np.testing.assert_array_equal(dequantize(q, scale, np.zeros(16, np.int64), 0), ref_y)
    assert set(np.unique(np.abs(q))) <= set(LEVELS) and np.abs(q).max() == 6


def test_fp4_beats_int4_on_heavy_tailed_weights_and_loses_on_flat_ones():
    rng = np.random.default_rng(1)
    gains = {}
    for draw in ("laplace", "uniform"):
        w = _channels(rng, draw)
        db = {}
        for name in ("int4", "fp4"):
            grid = QTYPES[name]
            scale, zp = choose_qparams(*mse_weight_ranges(w, 0, grid), grid, symmetric=True)
            db[name] = sqnr_db(w, fake_quantize(w, scale, zp, grid, 0))
        gains[draw] = db["fp4"] - db["int4"]
    assert gains["laplace"] > 1.0, gains  # levels dense near 0, where such weights are
    assert gains["uniform"] < -1.0, gains


def test_learned_rounding_on_fp4_chooses_between_grid_neighbours():
    rng = np.random.default_rng(2)
    w = _channels(rng)
    scale, zp = choose_qparams(*mse_weight_ranges(w, 0, FP4), FP4, symmetric=True)
    module = LearnedRoundingWeight(w, QParams(scale, zp, "fp4", 0))
    units = torch.from_numpy(w / scale[:, None])
    inside = units.abs() <= 6
    soft = module() / module.scale  # starts at the float weight (AdaRound's start)
    assert torch.allclose(soft[inside], units[inside], atol=0.03)
    module.soft = False
    hard = module.integers()
    assert set(np.unique(hard.numpy())) <= set(LEVELS)
    low, high = module.floor, module.floor + module.gap
    assert bool(((hard == low) | (hard == high))[inside].all())
    module.alpha.data.fill_(-10.0)  # every weight rounds down to its lower neighbour
    assert torch.equal(module.integers()[inside], low[inside])


def test_fp4_is_refused_where_no_runtime_runs_it_and_with_integer_only_roundings(small_cnn,
                                                                                 tmp_path):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", small_cnn, "--calib", "random", "--weights", "fp4", "-o", out)
    assert_one_line_error(result, "--target ort-cpu does not run fp4 weights")
    result = invoke("quantize", small_cnn, "--calib", "none", "--activations", "none",
                    "--weights", "fp4", "--target", "openvino-cpu", "--rounding", "gptq",
                    "-o", out)
    assert_one_line_error(result, "--rounding gptq and --precalibrate work on integer grids")
    assert not out.exists()


@pytest.mark.skipif(missing("openvino-cpu") is not None, reason=str(missing("openvino-cpu")))
def test_an_fp4_model_runs_on_openvino_close_to_fp32_and_int4(small_cnn, npz, tmp_path):
    outputs = {}
    for weights, target in (("fp4", "openvino-cpu"), ("int4", "ort-cpu")):
        out = tmp_path / f"{weights}.onnx"
        result = invoke("quantize", small_cnn, "--calib", npz, "--weights", weights, "--target",
                        target, "--weight-observer", "mse", "-o", out, "--quiet")
        assert result.exit_code == 0, result.output
        assert f"{target if weights == 'fp4' else 'ORT'} runs it" in result.output
        outputs[weights] = out
    model = onnx.load(str(outputs["fp4"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 23 and model.ir_version >= 11
    stored = [i.name for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT4E2M1 and i.name.endswith("_quantized")]
    assert len(stored) == 5  # every Conv/Gemm weight of the small CNN
    validate = invoke("validate", small_cnn, outputs["fp4"], "--data", npz, "--target",
                      "openvino-cpu", "--quiet")
    assert validate.exit_code == 0, validate.output
    assert "FullyConnected f4e2m1 1" in validate.output  # the Gemm runs on compressed weights
    plain = invoke("validate", small_cnn, outputs["fp4"], "--data", npz, "--quiet")
    assert_one_line_error(plain, "holds fp4 weights, which ONNX Runtime has no kernel for")
    report = invoke("report", small_cnn, outputs["fp4"], "--data", npz, "-o",
                    tmp_path / "r.html", "--quiet")
    assert_one_line_error(report, "the report measures each layer in ONNX Runtime")
    assert not (tmp_path / "r.html").exists()
    assert invoke("inspect", outputs["fp4"]).exit_code == 0
    feed = dict(np.load(npz))
    fp32 = load_on(small_cnn, "ort-cpu").infer(feed)[0]
    got = {w: load_on(path, "openvino-cpu" if w == "fp4" else "ort-cpu").infer(feed)[0]
           for w, path in outputs.items()}
    db = {w: sqnr_db(fp32, y) for w, y in got.items()}
    assert db["fp4"] > 40 and db["fp4"] > db["int4"] - 3, db  # 44.9 and 46.2 dB here


@pytest.mark.skipif(missing("openvino-cpu") is not None, reason=str(missing("openvino-cpu")))
def test_brecq_on_fp4_beats_nearest_on_held_out_images_run_on_openvino(small_cnn, tmp_path):
    db = {}
    for rounding in ("nearest", "brecq"):
        out = tmp_path / f"{rounding}.onnx"
        config = QuantConfig.from_preset("fast", weights="fp4", rounding=rounding, iters=60,
                                         target=load_target("openvino-cpu"))
        quantize(small_cnn, out, image_feeds(64), config, quiet=True)
        result = compare(load_model(small_cnn), load_on(out, "openvino-cpu"),
                         image_feeds(64, seed=1))
        db[rounding] = result.outputs[0].sqnr_db
    assert db["brecq"] > db["nearest"] + 5.0, db  # 44.7 vs 32.1 dB here
