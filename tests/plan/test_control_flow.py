"""Layers inside If/Loop bodies and recurrent ops are quantized like top-level ones."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import invoke
from onnx import TensorProto

from onnxq.analysis.output_check import cosine
from onnxq.io.model_io import load_model
from onnxq.models import hostile


def _body_ops(path) -> list[list[str]]:
    model = onnx.load(path)
    return [[n.op_type for n in attr.g.node] for node in model.graph.node
            for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]


def _quantize(tmp_path, model: onnx.ModelProto, x: np.ndarray, *args: str):
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=x)
    out = tmp_path / "q.onnx"
    result = invoke("quantize", tmp_path / "m.onnx", "--calib", tmp_path / "c.npz", "-o", out,
                    "--quiet", *args)
    assert result.exit_code == 0, result.output
    return tmp_path / "m.onnx", out


def _agreement(fp32, quantized, x: np.ndarray) -> float:
    ref = [ort.InferenceSession(str(fp32)).run(None, {"x": s[None]})[0] for s in x]
    got = [ort.InferenceSession(str(quantized)).run(None, {"x": s[None]})[0] for s in x]
    return cosine(np.concatenate(ref), np.concatenate(got))


@pytest.mark.parametrize("preset", ["fast", "default"])
def test_conv_in_each_if_branch_is_quantized(tmp_path, preset):
    x = hostile.feeds(8)
    x[::2], x[1::2] = np.abs(x[::2]), -np.abs(x[1::2])  # both branches see data
    fp32, out = _quantize(tmp_path, hostile.if_net(), x, "--preset", preset)
    for ops in _body_ops(out):
        assert ops.count("DequantizeLinear") == 2 and "Conv" in ops  # int8 weight, int32 bias
    report = json.loads(load_model(out).metadata_props["onnxq.report"])
    assert report["quantized_weights"] == 3 and "branch" not in report["float_nodes"]
    signs = np.array([1, -1] * 3, np.float32).reshape(-1, 1, 1, 1)
    assert _agreement(fp32, out, np.abs(hostile.feeds(6, seed=4)) * signs) > 0.99


def test_loop_body_with_outer_scope_weights_is_calibrated_and_quantized(tmp_path):
    x = np.abs(np.random.default_rng(0).standard_normal((8, 8, 8, 8))).astype(np.float32)
    fp32, out = _quantize(tmp_path, hostile.loop_net(), x)
    (body,) = _body_ops(out)
    assert body.count("QuantizeLinear") == 1 and body.count("DequantizeLinear") == 3
    assert _agreement(fp32, out, x[:4]) > 0.99


def test_recurrent_weights_are_stored_in_int8(tmp_path):
    torch = pytest.importorskip("torch")
    from torch import nn

    from onnxq.models.torch_export import export_module

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(8, 32, batch_first=True, bidirectional=True)
            self.gru = nn.GRU(64, 16, batch_first=True)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.gru(self.lstm(x)[0])[0])

    torch.manual_seed(0)
    export_module(Net().eval(), torch.zeros(1, 20, 8), tmp_path / "rnn.onnx", "x")
    x = np.random.default_rng(0).standard_normal((8, 20, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    out = tmp_path / "q.onnx"
    assert invoke("quantize", tmp_path / "rnn.onnx", "--calib", tmp_path / "c.npz", "-o", out,
                  "--quiet").exit_code == 0
    inits = onnx.load(out).graph.initializer
    low = sum(int(np.prod(t.dims)) for t in inits if t.data_type == TensorProto.INT8)
    total = sum(int(np.prod(t.dims)) for t in inits if t.data_type in
                (TensorProto.INT8, TensorProto.FLOAT, TensorProto.INT32))
    assert low / total > 0.9  # recurrent weights included
    report = json.loads(load_model(out).metadata_props["onnxq.report"])
    assert "computed in float" in report["float_nodes"]["/lstm/LSTM"]
    assert _agreement(tmp_path / "rnn.onnx", out, x[:4]) > 0.99
