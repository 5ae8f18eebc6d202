"""Fusion, cross-layer equalization and bias correction: exactness, negative cases, error
reduction."""

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.api import quantize
from onnxq.calibrate.stream import channel_means
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.models.synthetic import image_feeds
from onnxq.prepare.cross_layer_equalization import CrossLayerEqualizationPass, _in_channel_view
from onnxq.prepare.fold_constants import FoldConstantsPass
from onnxq.prepare.fuse_batchnorm import BN_STATS, FuseBatchNormPass
from onnxq.prepare.fuse_matmul_add import FuseMatMulAddPass
from onnxq.prepare.stage import prepare


def run(model: ir.Model, feed: dict, optimize: bool = True) -> np.ndarray:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    options = ort.SessionOptions()
    if not optimize:  # so ORT's own Conv+BN fusion does not hide ours
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def ops(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def parse(text: str, data: int = 1, seed: int = 0, **values) -> ir.Model:
    """An ONNX text model; graph inputs after the first ``data`` become initializers.

    Those named in ``values`` get that value; weights ``w*`` get seeded random values with
    per-output-channel magnitudes between 0.1 and 3; the rest are zeros.
    """
    model = ir.from_proto(onnx.parser.parse_model(text))
    rng = np.random.default_rng(seed)
    for value in list(model.graph.inputs)[data:]:
        model.graph.inputs.remove(value)
        shape = tuple(value.shape.dims)
        if value.name in values:
            array = np.broadcast_to(np.asarray(values[value.name], np.float32), shape)
        elif value.name.startswith("w"):
            spread = rng.uniform(0.1, 3.0, shape[:1] + (1,) * (len(shape) - 1))
            array = rng.standard_normal(shape) * spread
        else:
            array = np.zeros(shape)
        value.const_value = ir.tensor(np.array(array, np.float32), name=value.name)
        model.graph.register_initializer(value)
    return model


def lite_feed(imagenet_sample, count: int = 8) -> dict:
    from onnxq.io.data import ImageFolder
    from onnxq.models.efficientnet_lite import INPUT_NAME, PREPROCESS

    images = ImageFolder(imagenet_sample / "val", INPUT_NAME, PREPROCESS, samples=count)
    return {INPUT_NAME: np.concatenate([f[INPUT_NAME] for f in images])}


def test_batchnorm_fusion_is_exact_on_lite0(lite0_bn, imagenet_sample):
    feed = lite_feed(imagenet_sample)
    model = load_model(lite0_bn)
    reference = run(model, feed, optimize=False)
    assert ops(model)["BatchNormalization"] == 49
    FoldConstantsPass()(model)
    assert FuseBatchNormPass()(model).modified
    assert ops(model)["BatchNormalization"] == 0
    assert sum(BN_STATS in node.meta for node in model.graph) == 49
    fused = run(model, feed, optimize=False)
    assert np.abs(fused - reference).max() <= 1e-4 * np.abs(reference).max()


def test_cle_is_exact_on_lite0_and_equalizes_ranges(lite0_bn, imagenet_sample):
    feed = lite_feed(imagenet_sample)
    model = load_model(lite0_bn)
    reference = run(model, feed, optimize=False)
    prepare(model, QuantConfig(equalize="none"))
    plain = {name: v.const_value.numpy().copy() for name, v in model.graph.initializers.items()}
    cle = CrossLayerEqualizationPass(clip_policy="skip")
    assert cle(model).modified and cle.pairs > 0 and cle.clips_replaced == 0
    changed = [n for n, v in model.graph.initializers.items()
               if n in plain and not np.array_equal(v.const_value.numpy(), plain[n])]
    assert len(changed) >= 2 * cle.pairs
    equalized = run(model, feed, optimize=False)
    assert np.abs(equalized - reference).max() <= 1e-4 * np.abs(reference).max()
    assert ops(model)["Clip"] == 33, "ReLU6 links must not be rescaled in exact mode"


CONV_RELU_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4, 8, 8] x, float[8, 4, 3, 3] w1, float[8] b1, float[8, 1, 3, 3] w2, float[8] b2,
   float[6, 8, 1, 1] w3, float[6] b3, float lo, float hi) => (float[2, 6, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r = Relu (a)
    d = Conv <group = 8, pads = [1, 1, 1, 1]> (r, w2, b2)
    c = Clip (d, lo, hi)
    y = Conv (c, w3, b3)
}
"""
CHAIN_VALUES = {"b1": np.linspace(0.1, 0.8, 8), "b2": 0.1, "lo": 0.0, "hi": 6.0}


def chain_feed() -> dict:
    return {"x": np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)}


def test_cle_equalizes_relu_and_depthwise_links_exactly():
    model = parse(CONV_RELU_CHAIN, **CHAIN_VALUES)
    before = run(model, chain_feed())
    cle = CrossLayerEqualizationPass(clip_policy="skip")
    cle(model)
    assert cle.pairs == 1  # conv -> relu -> depthwise; the Clip link is skipped
    nodes = list(model.graph)
    w1, w2 = (nodes[i].inputs[1].const_value.numpy() for i in (0, 2))
    r1 = np.abs(w1).reshape(8, -1).max(axis=1)
    r2 = np.abs(_in_channel_view(nodes[2], w2, 8)).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    np.testing.assert_allclose(run(model, chain_feed()), before, rtol=0,
                               atol=1e-5 * np.abs(before).max())


def test_cle_relu_policy_replaces_clip_and_says_so():
    model = parse(CONV_RELU_CHAIN, **CHAIN_VALUES)
    cle = CrossLayerEqualizationPass(clip_policy="relu")
    cle(model)
    assert cle.pairs == 2 and cle.clips_replaced == 1 and ops(model)["Clip"] == 0


def test_high_bias_absorption_moves_bias_and_keeps_outputs():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4, 6, 6] x, float[8, 4, 1, 1] w1, float[8] b1, float[8] gamma, float[8] beta,
       float[8] mean, float[8] var, float[5, 8, 1, 1] w2, float[5] b2) => (float[2, 5, 6, 6] y) {
        a = Conv (x, w1, b1)
        n = BatchNormalization (a, gamma, beta, mean, var)
        r = Relu (n)
        y = Conv (r, w2, b2)
    }
    """
    model = parse(text, gamma=0.5, beta=[10] * 4 + [0] * 4, var=1.0)
    for name in ("w1",):  # keep the pre-activation within 3 std of beta
        value = model.graph.initializers[name]
        value.const_value = ir.tensor(value.const_value.numpy() * 0.05, name=name)
    feed = {"x": np.random.default_rng(2).uniform(-1, 1, (2, 4, 6, 6)).astype(np.float32)}
    before = run(model, feed)
    FuseBatchNormPass()(model)
    b2_before = model.graph.node(-1).inputs[2].const_value.numpy().copy()
    CrossLayerEqualizationPass(absorb_high_bias=True)(model)
    first, second = model.graph.node(0), model.graph.node(-1)
    mean, std = first.meta[BN_STATS]  # absorbed down to mean - 3 std = 0 where beta was high
    np.testing.assert_allclose(mean[:4] - 3 * std[:4], 0, atol=1e-5)
    np.testing.assert_allclose(mean[4:], 0, atol=1e-6)
    assert not np.allclose(second.inputs[2].const_value.numpy(), b2_before)
    np.testing.assert_allclose(run(model, feed), before, rtol=0, atol=1e-4 * np.abs(before).max())


def test_fusion_negative_cases_are_left_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4, 6, 6] x, float[3, 5, 8] t, float[5, 7] u, float[4, 4, 1, 1] w1, float[4] b1,
       float[4] gamma, float[4] beta, float[4] mean, float[4] var, float[8, 8] w3, float[8] b3,
       float[7, 7] w4) => (float[2, 4, 6, 6] y, float[3, 5, 8] z, float[5, 7] v) {
        a = Conv (x, w1, b1)
        s = Add (a, x)
        y = BatchNormalization (s, gamma, beta, mean, var)
        m = MatMul (t, w3)
        z = Add (m, b3)
        k = MatMul (u, w4)
        v = Add (k, u)
    }
    """
    model = parse(text, data=3, gamma=[1, 2, 3, 4], beta=[0, 1, 0, 1], var=1.0)
    assert not FuseBatchNormPass()(model).modified  # BN after Add: nothing to fold into
    assert not FuseMatMulAddPass()(model).modified  # 3-D MatMul; Add of a run-time tensor
    assert ops(model)["Gemm"] == 0 and ops(model)["BatchNormalization"] == 1


def test_matmul_add_becomes_gemm_exactly():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[5, 8] x, float[8, 6] w, float[6] b) => (float[5, 6] y) {
        m = MatMul (x, w)
        y = Add (m, b)
    }
    """
    model = parse(text, b=np.arange(1, 7))
    feed = {"x": np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)}
    before = run(model, feed)
    assert FuseMatMulAddPass()(model).modified
    assert ops(model) == Counter({"Gemm": 1})
    np.testing.assert_allclose(run(model, feed), before, rtol=1e-6, atol=1e-6)


def test_shared_weights_are_not_folded():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 5, 5] x, float[4, 4, 1, 1] w1, float[4] gamma, float[4] beta, float[4] mean,
       float[4] var) => (float[1, 4, 5, 5] y, float[1, 4, 5, 5] z) {
        a = Conv (x, w1)
        y = BatchNormalization (a, gamma, beta, mean, var)
        z = Conv (x, w1)
    }
    """
    model = parse(text, gamma=[1, 2, 3, 4], beta=[0, 1, 0, 1], var=1.0)
    assert not FuseBatchNormPass()(model).modified


def _layer_mean_error(fp32: ir.Model, quantized: ir.Model, feeds: list) -> float:
    names = [n.outputs[0].name for n in fp32.graph if n.op_type in ("Conv", "ConvTranspose")]
    reference = channel_means(fp32, names, feeds)
    got = channel_means(quantized, names, feeds)
    return sum(float(np.sum((reference[n] - got[n]) ** 2)) for n in names)


def test_empirical_bias_correction_reduces_every_layers_mean_error(small_cnn, tmp_path):
    """Per-layer output means of the int4 network move back towards FP32 (held-out inputs)."""
    errors = {}
    for correction in ("none", "empirical"):
        out = tmp_path / f"{correction}.onnx"
        quantize(small_cnn, out, image_feeds(32), QuantConfig.from_preset(
            "fast", weights="int4", bias_correction=correction), quiet=True)
        errors[correction] = _layer_mean_error(load_model(small_cnn), load_model(out),
                                               image_feeds(32, seed=1))
    assert errors["empirical"] < 0.5 * errors["none"]


def test_presets_record_their_passes(small_cnn, tmp_path):
    reports = {}
    for preset in ("fast", "default"):
        out = tmp_path / f"{preset}.onnx"
        reports[preset] = quantize(small_cnn, out, image_feeds(16),
                                   QuantConfig.from_preset(preset), quiet=True)
        stored = load_model(out).metadata_props["onnxq.report"]
        assert stored == reports[preset].to_json(stored=True)
    assert "EmpiricalBiasCorrectionPass" not in reports["fast"].passes
    assert {"FuseBatchNormPass", "EmpiricalBiasCorrectionPass",
            "RefineActivationRangesPass"} <= set(reports["default"].passes)


def test_one_shot_iterators_are_refused_when_passes_read_data_twice(small_cnn, tmp_path):
    from onnxq.errors import OnnxqError

    with pytest.raises(OnnxqError, match="one-shot iterator"):
        quantize(small_cnn, tmp_path / "q.onnx", iter(image_feeds(8)), QuantConfig(), quiet=True)
