"""Clean-up passes: structure, exact FP32 numerics, negative cases, checker validity."""

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.models.synthetic import image_feeds
from onnxq.prepare.fold_constants import FoldConstantsPass
from onnxq.prepare.fuse_pad_into_conv import FusePadIntoConvPass
from onnxq.prepare.opset_upgrade import OpsetUpgradePass
from onnxq.prepare.stage import prepare
from onnxq.prepare.tolerant_shape_inference import TolerantShapeInferencePass


def run(model: ir.Model, feed: dict) -> np.ndarray:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def ops(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph)


def test_fold_constants_removes_the_exporters_pad_chain(small_cnn):
    model = load_model(small_cnn)
    feed = image_feeds(1)[0]
    before = run(model, feed)
    assert ops(model)["ConstantOfShape"] == 1
    assert FoldConstantsPass()(model).modified
    assert ops(model)["ConstantOfShape"] == 0 and ops(model)["Slice"] == 0
    assert model.graph.node(0).op_type != "ConstantOfShape"
    np.testing.assert_array_equal(run(model, feed), before)


def test_fuse_pad_into_conv_is_exact(small_cnn):
    model = load_model(small_cnn)
    FoldConstantsPass()(model)
    feed = image_feeds(2)[0]
    before = run(model, feed)
    assert FusePadIntoConvPass()(model).modified
    assert ops(model)["Pad"] == 0
    np.testing.assert_allclose(run(model, feed), before, rtol=0, atol=1e-5 * np.abs(before).max())


def _pad_conv_model(mode: str) -> ir.Model:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, 5, 5] x) => (float[1, 3, 7, 7] y) {{
        pads = Constant <value = int64[8] {{0, 0, 1, 1, 0, 0, 1, 1}}> ()
        p = Pad <mode = "{mode}"> (x, pads)
        y = Conv (p, w)
    }}
    """
    model = ir.from_proto(onnx.parser.parse_model(text))
    w = ir.Value(name="w", const_value=ir.tensor(np.ones((3, 2, 1, 1), np.float32), name="w"))
    model.graph.register_initializer(w)
    conv = model.graph.node(2)
    conv.replace_input_with(1, w)
    return model


def test_reflect_pad_is_not_fused():
    model = _pad_conv_model("reflect")
    LiftConstantsToInitializersPass(size_limit=0)(model)
    assert not FusePadIntoConvPass()(model).modified
    assert ops(model)["Pad"] == 1


def test_constant_pad_is_fused_exactly():
    model = _pad_conv_model("constant")
    feed = {"x": np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)}
    before = run(model, feed)
    assert FusePadIntoConvPass()(model).modified
    np.testing.assert_allclose(run(model, feed), before, atol=1e-6)


def test_lift_constants_makes_paddle_style_weights_quantizable(small_cnn):
    """Weights held in Constant nodes (as Paddle2ONNX emits) are lifted and quantized."""
    proto = onnx.load(str(small_cnn))
    for init in list(proto.graph.initializer):
        proto.graph.node.insert(0, onnx.helper.make_node(
            "Constant", [], [init.name], value=init))
    del proto.graph.initializer[:]
    model = ir.from_proto(proto)
    assert not model.graph.initializers
    passes = prepare(model, QuantConfig())
    assert "LiftConstantsToInitializersPass" in passes
    conv_weights = [n.inputs[1] for n in model.graph if n.op_type == "Conv"]
    assert conv_weights and all(w.is_initializer() for w in conv_weights)


def test_opset_upgrade_to_21_keeps_outputs(small_cnn):
    model = load_model(small_cnn)
    feed = image_feeds(1)[0]
    before = run(model, feed)
    assert OpsetUpgradePass(21)(model).modified
    assert model.opset_imports[""] == 21
    np.testing.assert_allclose(run(model, feed), before, atol=1e-5)
    assert not OpsetUpgradePass(13)(model).modified


def test_shape_inference_tolerates_unknown_ops_and_dynamic_dims():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
    g (float[N, 4] x) => (float y) {
        t = Relu (x)
        y = custom.Mystery (t)
    }
    """
    model = ir.from_proto(onnx.parser.parse_model(text))
    TolerantShapeInferencePass()(model)
    relu_out = model.graph.node(0).outputs[0]
    assert relu_out.shape is not None and relu_out.shape[1] == 4
    assert not isinstance(relu_out.shape[0], int)


def test_prepare_is_exact_on_lite0(lite0, imagenet_sample):
    """Fold/fuse passes leave EfficientNet-Lite0's outputs unchanged on real images."""
    from onnxq.io.data import ImageFolder
    from onnxq.models.efficientnet_lite import INPUT_NAME, PREPROCESS

    images = ImageFolder(imagenet_sample / "val", INPUT_NAME, PREPROCESS, samples=4)
    feed = {INPUT_NAME: np.concatenate([f[INPUT_NAME] for f in images])}
    model = load_model(lite0)
    before = run(model, feed)
    prepare(model, QuantConfig())
    assert ops(model)["Pad"] == 0 and ops(model)["ConstantOfShape"] == 0
    after = run(model, feed)
    assert np.abs(after - before).max() <= 1e-4 * np.abs(before).max()
