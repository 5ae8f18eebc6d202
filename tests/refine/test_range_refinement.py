"""Range refinement's searched ends, its bounded work (windows, candidates in one batch,
sampled output channels) and bias correction read through the fused integer outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from onnxq.calibrate.stream import calibrate, channel_means
from onnxq.config import QuantConfig
from onnxq.emit.qdq import activation_readouts
from onnxq.emit.simulate import quantized_copy
from onnxq.io.model_io import load_model
from onnxq.models import synthetic
from onnxq.numerics.affine import QTYPES, choose_qparams
from onnxq.plan.annotate import annotate
from onnxq.plan.qparams import QParams, resolve_activations, resolve_weights
from onnxq.prepare.stage import prepare
from onnxq.refine.ranges import (
    ELEMENTWISE_CONSUMERS,
    OUTPUT_CHANNELS,
    _fake_quantize,
    consumer_error,
    refinable_ends,
    sample_window,
)
from onnxq.refine.rounding.torch_block import ActivationQuant
from onnxq.spec import QuantPlan


def _plan(uses: dict[str, list[tuple[ir.Node, int]]]) -> QuantPlan:
    """A plan whose ``uses`` read the given nodes (named here when they have no name)."""
    nodes = {}
    for k, node in enumerate(node for pairs in uses.values() for node, _ in pairs):
        node.name = node.name or f"node_{k}"
        nodes[node.name] = node
    return QuantPlan(uses={name: [(node.name, index) for node, index in pairs]
                           for name, pairs in uses.items()}, nodes=nodes)


def _plan_with_use(op_type: str, index: int = 0, weight: bool = True) -> QuantPlan:
    """A plan whose tensor ``x`` is input ``index`` of one ``op_type`` node, whose other
    input is a constant weight (``weight``) or another activation."""
    x = ir.Value(name="x")
    other = ir.Value(name="w", const_value=ir.tensor(np.ones((2, 2), np.float32))
                     if weight else None)
    node = ir.node(op_type, [x, other] if index == 0 else [other, x])
    return _plan({"x": [(node, index)]})


def test_window_cuts_only_a_convs_spatial_axes_to_the_element_limit():
    plan = _plan_with_use("Conv")
    array = np.arange(2 * 16 * 100 * 60, dtype=np.float32).reshape(2, 16, 100, 60)
    cut = sample_window(plan, "x", array, limit=16 * 900)
    assert cut.shape == (2, 16, 30, 30), cut.shape  # square where both axes allow it
    np.testing.assert_array_equal(cut, array[:, :, 35:65, 15:45])  # centred
    assert cut.flags.c_contiguous and not np.shares_memory(cut, array)
    small = np.zeros((1, 4, 8, 8), np.float32)
    assert sample_window(plan, "x", small, limit=1024) is small


def test_window_never_cuts_what_a_layer_contracts():
    array = np.zeros((1, 8, 512, 64), np.float32)
    cut = sample_window(_plan_with_use("MatMul"), "x", array, limit=4096)
    assert cut.shape == (1, 8, 8, 64), cut.shape  # rows cut, the contracted axis whole
    wide = np.zeros((4, 100000), np.float32)
    assert sample_window(_plan_with_use("Gemm"), "x", wide, limit=10) is wide


@pytest.mark.parametrize("plan", [_plan_with_use("Sigmoid"), _plan_with_use("Add"),
                                  _plan_with_use("MatMul", index=1, weight=False)])
def test_elementwise_consumers_get_a_spread_of_every_channel(plan):
    # channels last, as a transformer's [batch, tokens, hidden]: a window over the last
    # axis would drop the outlier channels at its ends
    array = np.tile(np.arange(768, dtype=np.float32), (2, 512, 1))
    cut = sample_window(plan, "x", array, limit=1 << 15)
    assert cut.shape == (2, 1 << 15)
    assert set(np.unique(cut)) == set(range(768))
    np.testing.assert_array_equal(cut[0], cut[1])  # one fixed subset, the same each batch


def test_candidates_are_quantized_as_onnx_defines_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float32) * 4
    candidates = [(-12.0, 12.0), (-3.0, 9.0), (-0.5, 2.0), (0.0, 5.0)]
    stacked = _fake_quantize(x, candidates, "uint8")
    assert stacked.shape == (len(candidates), *x.shape)
    for (lo, hi), got in zip(candidates, stacked, strict=True):
        scale, zero_point = choose_qparams(lo, hi, QTYPES["uint8"], False)
        expected = ActivationQuant(QParams(scale, zero_point, "uint8"))(torch.from_numpy(x))
        np.testing.assert_array_equal(got, expected.numpy())


def _silu_plan() -> QuantPlan:
    """``x`` read by Sigmoid(x) and by the Mul of x * Sigmoid(x); ``y`` by a Conv too."""
    x, y = ir.Value(name="x"), ir.Value(name="y")
    sigmoid = ir.node("Sigmoid", [x])
    mul = ir.node("Mul", [x, sigmoid.outputs[0]])
    weight = ir.Value(name="w", const_value=ir.tensor(np.ones((2, 2, 1, 1), np.float32)))
    return _plan({"x": [(sigmoid, 0), (mul, 0)],
                  "y": [(ir.node("Sigmoid", [y]), 0), (ir.node("Conv", [y, weight]), 0)]})


@pytest.mark.parametrize("op_type, index, weight, ends", [
    ("Sigmoid", 0, False, (0, 1)), ("Tanh", 0, False, (0, 1)), ("Relu", 0, False, (0,)),
    ("LeakyRelu", 0, False, (0,)), ("HardSwish", 0, False, (0,)), ("Conv", 0, True, ()),
    ("MatMul", 0, True, ()), ("MatMul", 1, False, ()), ("Add", 0, False, ()),
    ("Concat", 0, False, ()),
])
def test_only_the_ends_where_the_consumer_saturates_are_searched(op_type, index, weight, ends):
    assert refinable_ends(_plan_with_use(op_type, index, weight), ["x"]) == ends


def test_a_group_is_searched_where_all_its_consumers_saturate():
    plan = _silu_plan()
    assert refinable_ends(plan, ["x"]) == (0,)  # SiLU: flat below, linear above
    assert refinable_ends(plan, ["y"]) == ()  # the Conv reads every value
    assert refinable_ends(plan, ["x", "y"]) == ()
    assert refinable_ends(QuantPlan(uses={}), ["x"]) == ()  # a graph output


@pytest.mark.parametrize("op_type, weight_shape, attributes", [
    ("Conv", (256, 32, 3, 3), {"pads": [1, 1, 1, 1]}),
    ("MatMul", (32, 300), {}),
    ("Gemm", (300, 32), {"transB": 1}),
])
def test_sampled_output_channels_estimate_the_full_layer_error(op_type, weight_shape,
                                                               attributes, monkeypatch):
    rng = np.random.default_rng(1)
    x_shape = (2, 32, 12, 12) if op_type == "Conv" else (2, 32) if op_type == "Gemm" else (
        2, 7, 32)
    array = np.abs(rng.standard_normal(x_shape)).astype(np.float32)
    array[..., 0] *= 20  # an outlier column that wants clipping
    x = ir.Value(name="x")
    weight = ir.Value(name="w", const_value=ir.tensor(
        rng.standard_normal(weight_shape).astype(np.float32)))
    node = ir.node(op_type, [x, weight], attributes=attributes)
    plan = _plan({"x": [(node, 0)]})
    candidates = [(0.0, float(array.max()) * share) for share in (1.0, 0.5, 0.25, 0.1, 0.02)]
    sampled = consumer_error(plan, ["x"], {"x": [array]}, "uint8", candidates)
    monkeypatch.setattr("onnxq.refine.ranges.OUTPUT_CHANNELS", 10**9)
    full = consumer_error(plan, ["x"], {"x": [array]}, "uint8", candidates)
    assert max(weight_shape) > OUTPUT_CHANNELS  # the sampled run really cut channels
    np.testing.assert_allclose(sampled, full, rtol=0.25)
    assert np.argmin(sampled) == np.argmin(full)


def test_bias_correction_reads_the_integer_outputs_without_losing_the_means(small_cnn):
    model = load_model(small_cnn)
    config = QuantConfig(samples=8)
    prepare(model, config)
    plan = annotate(model, config)
    feeds = synthetic.image_feeds(8, 0)
    qparams = resolve_activations(plan, calibrate(model, plan, feeds))
    copy = quantized_copy(model, plan, qparams, resolve_weights(model, plan))
    readouts = activation_readouts(copy)
    names = sorted(readouts)
    assert len(names) >= 3 and all(integer for _, integer in readouts.values()), readouts
    integers = {name: readouts[name][0] for name in names}
    dequantized = {name: _dequantized_name(copy, name) for name in names}
    int_means = channel_means(copy, list(integers.values()), feeds)
    float_means = channel_means(copy, list(dequantized.values()), feeds)
    for name in names:
        np.testing.assert_allclose(qparams[name].dequantize_mean(int_means[integers[name]]),
                                   float_means[dequantized[name]], rtol=1e-5, atol=1e-6)


def _dequantized_name(model: ir.Model, name: str) -> str:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "QuantizeLinear" and node.inputs[0].name == name:
            return next(user.outputs[0].name for user, _ in node.outputs[0].uses()
                        if user.op_type == "DequantizeLinear")
    raise KeyError(name)


@pytest.mark.parametrize("op_type, attributes", [
    ("Sigmoid", {}), ("Tanh", {}), ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}), ("HardSwish", {}),
])
def test_numpy_consumers_compute_what_onnx_runtime_does(op_type, attributes):
    x = np.random.default_rng(2).standard_normal((4, 3, 33)).astype(np.float32) * 12
    x[0, 0, :4] = [-120.0, 120.0, 0.0, -0.0]
    node = onnx.helper.make_node(op_type, ["x"], ["y"], **attributes)
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, x.shape)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    got = ELEMENTWISE_CONSUMERS[op_type](ir.from_proto(model).graph[0], x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
