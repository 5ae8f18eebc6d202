"""Outputs for each target follow its rules (read from the graph) and run on its runtime
(the QNN HTP simulator and OpenVINO on CPU; TensorRT/CUDA where a GPU is)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.io.runtime import optimized_op_types
from onnxq.models import synthetic, tiny_bert
from onnxq.targets.conformance import problems
from onnxq.targets.profile import load_target
from onnxq.targets.runtimes import load_on, missing


def _quantize(source, tmp_path, target: str, feeds, **kwargs):
    out = tmp_path / f"{source.stem}.{target}.onnx"
    config = QuantConfig.from_preset("fast", target=load_target(target), samples=8, **kwargs)
    report = quantize(source, out, feeds, config, quiet=True)
    return out, report


def _cnn(small_cnn, tmp_path, target: str, **kwargs):
    return _quantize(small_cnn, tmp_path, target, synthetic.image_feeds(8), **kwargs)


def _initializers(path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("target", ["ort-cpu", "ort-gpu", "tensorrt", "qnn-htp",
                                    "openvino-cpu"])
def test_every_target_output_follows_its_rules(small_cnn, bert17, tmp_path, target):
    for source, feeds in ((small_cnn, synthetic.image_feeds(8)),
                          (bert17, tiny_bert.feeds("calib", 8))):
        out, _ = _quantize(source, tmp_path, target, feeds)
        onnx.checker.check_model(str(out), full_check=True)
        assert problems(load_model(out), load_target(target)) == []


def test_the_check_finds_what_a_target_would_reject(small_cnn, tmp_path):
    out, _ = _cnn(small_cnn, tmp_path, "ort-cpu")
    found = problems(load_model(out), load_target("qnn-htp"))
    assert any("dynamic shape" in line for line in found), found
    assert any("read in float by the graph output" in line for line in found), found
    found = problems(load_model(out), load_target("tensorrt"))
    assert any("uint8 activations" in line for line in found), found
    assert any("int32 bias" in line for line in found), found


def test_ort_cpu_fuses_every_conv(small_cnn, tmp_path):
    out, _ = _cnn(small_cnn, tmp_path, "ort-cpu")
    ops = Counter(optimized_op_types(out))  # (no QLinearConvTranspose in ORT)
    assert ops["QLinearConv"] == 4 and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops


def test_int4_on_ort_cpu_keeps_the_4_bit_grid_in_int8_containers(small_cnn, tmp_path):
    (tmp_path / "int8").mkdir()
    (tmp_path / "packed").mkdir()
    boxed, report = _cnn(small_cnn, tmp_path / "int8", "ort-cpu", weights="int4")
    packed, _ = _cnn(small_cnn, tmp_path / "packed", "ort-cpu", weights="int4",
                     int4_storage="packed")
    weights = {k: v for k, v in _initializers(boxed).items()
               if k.endswith("weight_quantized")}
    assert weights and all(w.dtype == np.int8 and w.min() >= -8 and w.max() <= 7
                           for w in weights.values())
    assert report.target_rules["int4 weights stored in int8 containers"] == len(weights)
    assert Counter(optimized_op_types(boxed))["QLinearConv"] == 4
    assert Counter(optimized_op_types(packed))["QLinearConv"] == 0  # no int4 kernel
    feed = synthetic.image_feeds(1, seed=3)[0]
    same_grid = [ort.InferenceSession(str(p)).run(None, feed)[0] for p in (boxed, packed)]
    assert _cosine(*same_grid) > 0.999


def test_tensorrt_is_symmetric_int8_with_float_biases_and_deconv_axis_0(small_cnn, tmp_path):
    out, report = _cnn(small_cnn, tmp_path, "tensorrt")
    model = load_model(out)
    kinds = {node.outputs[0].dtype for node in model.graph if node.op_type == "QuantizeLinear"}
    assert kinds == {ir.DataType.INT8}
    assert not any(v.dtype == np.int32 for v in _initializers(out).values())
    (deconv,) = [n for n in model.graph if n.op_type == "ConvTranspose"]
    dq = deconv.inputs[1].producer()
    assert dq.op_type == "DequantizeLinear" and dq.attributes.get_int("axis") == 0
    assert report.target_rules["ConvTranspose weights per channel on axis 0"] == 1


def test_qnn_outputs_are_static_whole_units_with_per_tensor_matmuls(bert17, tmp_path):
    out, _ = _quantize(bert17, tmp_path, "qnn-htp", tiny_bert.feeds("calib", 8))
    model = load_model(out)
    assert all(isinstance(d, int) for d in model.graph.inputs[0].shape)
    assert model.graph.outputs[0].producer().op_type == "DequantizeLinear"
    assert model.graph.outputs[0].name == "logits"
    for node in model.graph:
        if node.op_type == "MatMul" and node.inputs[1].producer().inputs[0].const_value:
            assert node.inputs[1].producer().inputs[1].const_value.size == 1
    assert not any(node.op_type == "Erf" and node.inputs[0].producer().op_type ==
                   "DequantizeLinear" for node in model.graph)  # GELU quantized at its borders


def test_qnn_fixes_16_bit_sigmoid_outputs(tmp_path):
    fp32 = synthetic.export_silu_cnn(tmp_path / "silu.onnx")
    out, report = _quantize(fp32, tmp_path, "qnn-htp", synthetic.image_feeds(8),
                            activations="uint16")
    sigmoids = [n for n in load_model(out).graph if n.op_type == "Sigmoid"
                and not n.outputs[0].is_graph_output()]  # the model's output stays float
    assert sigmoids and report.target_rules["fixed output qparams"] == len(sigmoids)
    for node in sigmoids:
        (q,) = [user for user, _ in node.outputs[0].uses()]
        assert q.op_type == "QuantizeLinear"
        assert float(q.inputs[1].const_value.numpy()) == 1 / 65536
        assert int(q.inputs[2].const_value.numpy()) == 0


@pytest.mark.skipif(missing("qnn-htp") is not None, reason=str(missing("qnn-htp")))
def test_qnn_htp_runs_the_output_without_cpu_fallback_within_2_lsb(small_cnn, tmp_path):
    out, _ = _cnn(small_cnn, tmp_path, "qnn-htp")
    run = load_on(out, "qnn-htp")
    assert run.layers["nodes on QNN HTP, no CPU fallback"] > 0
    output_dq = load_model(out).graph.outputs[0].producer()
    lsb = float(output_dq.inputs[1].const_value.numpy())
    for feed in synthetic.image_feeds(4, seed=5):
        cpu = ort.InferenceSession(str(out)).run(None, feed)[0]
        assert np.abs(run.infer(feed)[0] - cpu).max() <= 2 * lsb + 1e-6


@pytest.mark.skipif(missing("qnn-htp") is not None, reason=str(missing("qnn-htp")))
def test_qnn_htp_refuses_an_ort_cpu_output_in_one_line(small_cnn, tmp_path):
    from onnxq.errors import OnnxqError

    out, _ = _cnn(small_cnn, tmp_path, "ort-cpu")
    with pytest.raises(OnnxqError, match=r"qnn-htp .* cannot load the model"):
        load_on(out, "qnn-htp")


@pytest.mark.skipif(missing("openvino-cpu") is not None, reason=str(missing("openvino-cpu")))
def test_openvino_runs_every_conv_and_matmul_in_8_bits(small_cnn, bert17, tmp_path):
    for source, feeds in ((small_cnn, synthetic.image_feeds(8)),
                          (bert17, tiny_bert.feeds("calib", 8))):
        out, _ = _quantize(source, tmp_path, "openvino-cpu", feeds)
        run = load_on(out, "openvino-cpu")
        integer = {k: v for k, v in run.layers.items() if k.split()[1] in ("u8", "i8")}
        floats = {k: v for k, v in run.layers.items()
                  if k not in integer and not k.startswith("Deconvolution")}
        assert integer and not floats, run.layers
        feed = feeds[0]
        cpu = ort.InferenceSession(str(out)).run(None, feed)[0]
        assert _cosine(run.infer(feed)[0], cpu) > 0.999  # OpenVINO computes what ORT does


@pytest.mark.skipif(missing("ort-tensorrt") is not None and missing("ort-cuda") is not None,
                    reason="no CUDA or TensorRT provider (needs onnxruntime-gpu and a GPU)")
def test_tensorrt_output_runs_on_a_gpu_provider(small_cnn, tmp_path):
    out, _ = _cnn(small_cnn, tmp_path, "tensorrt")
    runtime = "ort-tensorrt" if missing("ort-tensorrt") is None else "ort-cuda"
    run = load_on(out, runtime)
    feed = synthetic.image_feeds(1, seed=2)[0]
    fp32 = ort.InferenceSession(str(small_cnn)).run(None, feed)[0]
    assert _cosine(run.infer(feed)[0], fp32) > 0.99


def test_qnn_lookups_keep_their_uint8_tables_qparams(bert17, tmp_path):
    out, report = _quantize(bert17, tmp_path, "qnn-htp", tiny_bert.feeds("calib", 8))
    model = load_model(out)
    lookups = [n for n in model.graph if n.op_type == "Gather"
               and n.inputs[0].producer() is not None
               and n.inputs[0].producer().op_type == "DequantizeLinear"
               and n.inputs[0].producer().inputs[0].const_value is not None]
    assert lookups
    for lookup in lookups:
        table = lookup.inputs[0].producer()
        assert table.inputs[0].const_value.dtype == ir.DataType.UINT8  # int8 fails to compile
        assert int(table.inputs[2].const_value.numpy()) == 128
        (q,) = [user for user, _ in lookup.outputs[0].uses()]
        assert q.op_type == "QuantizeLinear"
        for k in (1, 2):  # the gathered integers need no requantization
            assert q.inputs[k].const_value.numpy() == table.inputs[k].const_value.numpy()
    assert report.target_rules["lookups keep their table's qparams"] >= 1


@pytest.mark.skipif(missing("qnn-htp") is not None, reason=str(missing("qnn-htp")))
def test_yolov8n_runs_on_qnn_htp_without_cpu_fallback(tmp_path):
    from onnxq.models import suite

    entry = suite.SUITE["yolov8n"]
    if (reason := entry.missing()) is not None:
        pytest.skip(reason)
    fp32 = entry.export(tmp_path / "yolo.onnx")
    out, _ = _quantize(fp32, tmp_path, "qnn-htp", entry.feeds("calib", 8, 0))
    assert problems(load_model(out), load_target("qnn-htp")) == []
    run = load_on(out, "qnn-htp")
    feed = entry.feeds("val", 1, 0)[0]
    fp32_out = ort.InferenceSession(str(fp32)).run(None, feed)[0]
    got = run.infer(feed)[0]
    assert _cosine(got[:, :4], fp32_out[:, :4]) > 0.999  # boxes
    assert _cosine(got[:, 4:], fp32_out[:, 4:]) > 0.9  # class scores: not on the boxes' grid
