"""The numeric core's granularity (per tensor, per channel, per block): numpy against ONNX
Runtime's DequantizeLinear, the torch twin against numpy, block ranges, and a block-wise plan
emitted and run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.models import tiny_bert
from onnxq.numerics.affine import (
    QTYPES,
    channel_ranges,
    choose_qparams,
    dequantize,
    fake_quantize,
    mse_weight_ranges,
)
from onnxq.numerics.affine import (
    quantize as quantize_array,
)
from onnxq.numerics.affine_torch import fake_quantize as torch_fake_quantize
from onnxq.numerics.affine_torch import per_axis
from onnxq.spec import QuantPlan

GRANULARITIES = [(None, None), (0, None), (1, None), (0, 16), (1, 8), (0, 12)]
"""(axis, block_size): per tensor, per channel on either axis, blocks (12 leaves a partial
block of 40 rows)."""


def _weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((40, 24)) * rng.uniform(0.1, 3, (40, 1))).astype(np.float32)


@pytest.mark.parametrize("qtype", ["int8", "int4"])
@pytest.mark.parametrize("axis, block_size", GRANULARITIES)
def test_numpy_dequantize_is_onnx_runtimes(qtype, axis, block_size):
    w, grid = _weights(), QTYPES[qtype]
    scale, zp = choose_qparams(*channel_ranges(w, axis, block_size), grid, symmetric=True)
    q = quantize_array(w, scale, zp, grid, axis, block_size)
    attrs = {} if axis is None else {"axis": axis}
    if block_size:
        attrs["block_size"] = block_size
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(np.int8))
    if qtype == "int4":
        dtype = onnx.TensorProto.INT4
    inits = [helper.make_tensor("q", dtype, q.shape, q.reshape(-1).tolist()),
             numpy_helper.from_array(scale.astype(np.float32), "s"),
             helper.make_tensor("z", dtype, zp.shape, zp.reshape(-1).tolist())]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)], "g", [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, w.shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {})[0]
    np.testing.assert_array_equal(dequantize(q, scale, zp, axis, block_size), expected)
    assert np.abs(expected - w).max() <= np.abs(w).max() / grid.qmax  # within one step


@pytest.mark.parametrize("axis, block_size", GRANULARITIES)
def test_torch_twin_quantizes_bit_for_bit_as_numpy(axis, block_size):
    w, grid = _weights(), QTYPES["int8"]
    scale, zp = choose_qparams(*channel_ranges(w, axis, block_size), grid, symmetric=False)
    expected = fake_quantize(w, scale, zp, grid, axis, block_size)
    got = torch_fake_quantize(torch.from_numpy(w), per_axis(scale, w.shape, axis, block_size),
                              per_axis(zp.astype(np.float32), w.shape, axis, block_size),
                              grid.qmin, grid.qmax)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_blocks_hold_their_own_ranges_and_beat_per_channel():
    w, grid = _weights(), QTYPES["int4"]
    lo, hi = channel_ranges(w, 0, 12)
    assert lo.shape == hi.shape == (4, 24)  # ceil(40 / 12) blocks down each column
    np.testing.assert_array_equal(hi[3], np.maximum(w[36:].max(axis=0), 0))  # partial block
    errors = {}
    for name, (axis, block) in {"channel": (1, None), "block": (0, 8)}.items():
        for observer in ("minmax", "mse"):
            ends = (channel_ranges(w, axis, block) if observer == "minmax"
                    else mse_weight_ranges(w, axis, grid, block_size=block))
            scale, zp = choose_qparams(*ends, grid, symmetric=True)
            errors[name, observer] = float(np.mean(
                (fake_quantize(w, scale, zp, grid, axis, block) - w) ** 2))
    assert errors["block", "minmax"] < 0.8 * errors["channel", "minmax"]
    assert errors["block", "mse"] <= errors["block", "minmax"]


def test_a_block_wise_plan_is_emitted_as_opset_21_blocked_dequantize(tmp_path):
    fp32 = tiny_bert.export(tmp_path / "bert.onnx")
    feeds = tiny_bert.feeds("calib", 8)
    config = QuantConfig.from_preset("fast", samples=8)
    plan_path = tmp_path / "plan.json"
    quantize(fp32, tmp_path / "a.onnx", feeds, config, quiet=True, plan_out=plan_path)
    data = json.loads(plan_path.read_text())
    matmuls = [name for name, spec in data["weights"].items() if spec["axis"] == 1
               and name not in {bias["weight"] for bias in data["biases"].values()}]
    assert matmuls
    for name in matmuls:
        data["weights"][name].update(qtype="int4", axis=0, block_size=16)
    plan = QuantPlan.from_json(json.dumps(data))
    out = tmp_path / "blocked.onnx"
    quantize(fp32, out, feeds, config, quiet=True, plan=plan)
    written = onnx.load(str(out))
    assert {o.domain: o.version for o in written.opset_import}[""] == 21
    blocked = [n for n in written.graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" and a.i == 16 for a in n.attribute)]
    assert len(blocked) == len(matmuls)
    onnx.checker.check_model(written, full_check=True)
    reference = ort.InferenceSession(str(fp32)).run(None, feeds[0])[0]
    got = ort.InferenceSession(str(out)).run(None, feeds[0])[0]
    cosine = float(np.sum(reference * got) / np.linalg.norm(reference) / np.linalg.norm(got))
    assert cosine > 0.98
