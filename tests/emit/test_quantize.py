"""Annotation, calibration and QDQ emission on small models, checked against FP32 and ORT."""

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.calibrate.stream import channel_means
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.io.runtime import optimized_op_types
from onnxq.models import tiny_bert
from onnxq.models.synthetic import image_feeds
from onnxq.plan.annotate import annotate
from onnxq.plan.qparams import resolve_weights, weight_qparams
from onnxq.prepare.stage import prepare
from onnxq.refine.bias_correction import EmpiricalBiasCorrectionPass


def planned(path, config: QuantConfig | None = None):
    config = config or QuantConfig()
    model = load_model(path)
    prepare(model, config)
    return model, annotate(model, config)


def by_op(model, op):
    return [n for n in model.graph if n.op_type == op]


def test_placement_lets_runtimes_fuse(small_cnn):
    model, plan = planned(small_cnn)
    clip_inputs = {n.inputs[0].name for n in by_op(model, "Clip")}
    assert not clip_inputs & set(plan.activations), "Q between Conv and Clip blocks fusion"
    for conv in by_op(model, "Conv"):
        assert conv.inputs[0].name in plan.activations
        assert plan.weights[conv.inputs[1].name].axis == 0
        assert conv.inputs[2].name in plan.biases
    (deconv,) = by_op(model, "ConvTranspose")
    assert plan.weights[deconv.inputs[1].name].axis == 1
    (gemm,) = by_op(model, "Gemm")
    assert plan.weights[gemm.inputs[1].name].axis == 0  # transB=1: rows are output channels
    (pool,) = by_op(model, "MaxPool")
    assert plan.group(pool.inputs[0].name) == plan.group(pool.outputs[0].name)
    (concat,) = by_op(model, "Concat")  # a signed pooled map beside a ReLU map: own grids
    pooled, side = concat.inputs
    assert len({plan.group(v.name) for v in (pooled, side, concat.outputs[0])}) == 3
    assert plan.group(pooled.name) == plan.group(pool.inputs[0].name)
    (add,) = by_op(model, "Add")
    assert all(v.name in plan.activations for v in add.inputs)


def test_a_relu_map_concatenated_with_a_signed_one_keeps_its_grid_and_fuses(small_cnn,
                                                                           tmp_path):
    out = tmp_path / "q.onnx"
    quantize(small_cnn, out, image_feeds(32), QuantConfig(), quiet=True)
    ops = Counter(optimized_op_types(out))  # side Conv + ReLU folds into QLinearConv
    assert ops["QLinearConv"] == 4 and ops["QLinearConcat"] == 1, ops
    assert ops["FusedConv"] == 0 and ops["Conv"] == 0, ops


def _two_branch_model(path, second: str, shape_reader: bool = False):
    """image -> Conv -> Relu -> r; r -> Conv -> a; r -> Conv -> [``second``] -> b;
    Concat(a, b) -> Conv -> y (and Shape(r) as a second output when ``shape_reader``)."""
    rng = np.random.default_rng(0)
    weight = lambda name, cout, cin: onnx.numpy_helper.from_array(  # noqa: E731
        rng.standard_normal((cout, cin, 1, 1)).astype(np.float32) * 0.3, name)
    nodes = [onnx.helper.make_node("Conv", ["image", "w0"], ["c0"]),
             onnx.helper.make_node("Relu", ["c0"], ["r"]),
             onnx.helper.make_node("Conv", ["r", "w1"], ["a"]),
             onnx.helper.make_node("Conv", ["r", "w2"], ["b0"]),
             onnx.helper.make_node(second, ["b0"], ["b"]),
             onnx.helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             onnx.helper.make_node("Conv", ["ab", "w3"], ["y"])]
    outputs = [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                  ["N", 4, 32, 32])]
    if shape_reader:
        nodes.append(onnx.helper.make_node("Shape", ["r"], ["r_shape"]))
        outputs.append(onnx.helper.make_tensor_value_info("r_shape", onnx.TensorProto.INT64,
                                                          [4]))
    graph = onnx.helper.make_graph(
        nodes, "two_branch",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                            ["N", 3, 32, 32])],
        outputs, [weight("w0", 8, 3), weight("w1", 4, 8), weight("w2", 4, 8),
                  weight("w3", 4, 8)])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              path)
    return path


@pytest.mark.parametrize("second, shared", [("Identity", True), ("Relu", False),
                                            ("Sigmoid", False)])
def test_concat_shares_one_grid_only_between_inputs_of_one_sign(tmp_path, second, shared):
    model, plan = planned(_two_branch_model(tmp_path / "m.onnx", second))
    (concat,) = by_op(model, "Concat")
    groups = {plan.group(v.name) for v in [*concat.inputs, concat.outputs[0]]}
    assert len(groups) == (1 if shared else 3), groups


def test_shape_readers_read_the_dequantized_tensor_so_its_producer_fuses(tmp_path):
    path = _two_branch_model(tmp_path / "m.onnx", "Identity", shape_reader=True)
    out = tmp_path / "q.onnx"
    quantize(path, out, image_feeds(16), QuantConfig(), quiet=True)
    model = load_model(out)
    (shape,) = by_op(model, "Shape")
    assert shape.inputs[0].producer().op_type == "DequantizeLinear"
    ops = Counter(optimized_op_types(out))  # Conv + ReLU -> QLinearConv though r has a Shape
    assert ops["QLinearConv"] == 3 and ops["FusedConv"] == 0, ops
    assert ops["Conv"] == 1, ops  # the last one: its output (the model's) stays float
    result = compare(load_model(path), model, image_feeds(4, seed=1))
    assert result.outputs[0].sqnr_db > 30


@pytest.mark.parametrize("kwargs, min_sqnr, opset", [
    ({}, 40.0, 17),
    ({"activations": "int8"}, 40.0, 17),
    ({"activations": "uint16", "weights": "int8"}, 40.0, 21),
    ({"weights": "int4", "int4_storage": "packed"}, 25.0, 21),
    ({"observer": "mse"}, 35.0, 17),
])
def test_quantized_small_cnn_is_valid_smaller_and_close(small_cnn, tmp_path, kwargs, min_sqnr,
                                                        opset):
    out = tmp_path / "q.onnx"
    report = quantize(small_cnn, out, image_feeds(32), QuantConfig(**kwargs), quiet=True)
    onnx.checker.check_model(str(out), full_check=True)
    model = load_model(out)
    assert model.opset_imports[""] == opset
    result = compare(load_model(small_cnn), model, image_feeds(16, seed=1))
    assert result.outputs[0].sqnr_db > min_sqnr
    counts = Counter(n.op_type for n in model.graph)
    assert counts["QuantizeLinear"] == report.quantized_activations
    assert counts["DequantizeLinear"] >= report.quantized_weights + report.quantized_activations
    weight_types = {v.const_value.dtype for v in model.graph.initializers.values()
                    if v.name.endswith("_quantized")}
    assert weight_types <= {ir.DataType.INT8, ir.DataType.INT4, ir.DataType.INT32}
    if kwargs.get("weights") == "int4":  # packed two per byte: 1/8 of the float bytes
        int4 = [v for v in model.graph.initializers.values()
                if v.const_value.dtype == ir.DataType.INT4 and v.name.endswith("_quantized")]
        original = load_model(small_cnn).graph.initializers
        float_bytes = sum(original[v.name.removesuffix("_quantized")].const_value.nbytes
                          for v in int4)
        int4_bytes = sum(v.const_value.nbytes for v in int4)
        assert float_bytes > 0 and int4_bytes <= float_bytes / 8 + 16


def test_bias_correction_reduces_layer_output_error(small_cnn):
    """Per-layer: E[(Q(W) - W) x] is removed from each corrected Conv's output."""
    config = QuantConfig(weights="int4")
    model, plan = planned(small_cnn, config)
    names = [b.activation for b in plan.biases.values()]
    means = channel_means(model, names, image_feeds(16))
    conv = by_op(model, "Conv")[2]  # the 1x1 projection
    x = np.stack([np.random.default_rng(i).standard_normal(16) + means[conv.inputs[0].name]
                  for i in range(256)])
    w = conv.inputs[1].const_value.numpy()[:, :, 0, 0]
    params = weight_qparams(conv.inputs[1].const_value.numpy(), "int4", 0, "minmax")
    wq = (params.scale.reshape(-1, 1) * np.round(w / params.scale.reshape(-1, 1))).clip(
        -8 * params.scale.reshape(-1, 1), 7 * params.scale.reshape(-1, 1))
    bias_before = conv.inputs[2].const_value.numpy().copy()
    EmpiricalBiasCorrectionPass(plan, resolve_weights(model, plan), lambda _: means)(model)
    bias_after = conv.inputs[2].const_value.numpy()
    reference = x @ w.T + bias_before
    err_before = np.mean((x @ wq.T + bias_before - reference).mean(0) ** 2)
    err_after = np.mean((x @ wq.T + bias_after - reference).mean(0) ** 2)
    assert err_after < 0.2 * err_before


def test_bias_correction_improves_int4_output(small_cnn, tmp_path):
    errors = []
    for correction in ("none", "empirical"):
        out = tmp_path / f"bc{correction}.onnx"
        quantize(small_cnn, out, image_feeds(32), QuantConfig(weights="int4",
                                                           bias_correction=correction), quiet=True)
        errors.append(compare(load_model(small_cnn), load_model(out), image_feeds(32, 1)))
    assert errors[1].outputs[0].sqnr_db > errors[0].outputs[0].sqnr_db


def test_exclude_keeps_matching_nodes_float(small_cnn):
    model, plan = planned(small_cnn, QuantConfig(exclude=("ConvTranspose",)))
    (deconv,) = by_op(model, "ConvTranspose")
    assert deconv.inputs[1].name not in plan.weights
    assert plan.float_nodes[deconv.name] == "excluded by --exclude"


@pytest.mark.parametrize("fixture", ["bert17", "bert14"])
def test_transformer_keeps_fragile_ops_float_and_stays_accurate(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    model, plan = planned(path)
    reasons = set(plan.float_nodes.values())
    assert any("layer normalization" in r for r in reasons)
    assert "kept float: GELU (Erf/Tanh chain)" in reasons
    for node in model.graph:
        if node.op_type in ("MatMul", "Gemm"):
            assert node.inputs[0].name in plan.activations
    out = tmp_path / "bert.q.onnx"
    quantize(path, out, tiny_bert.token_batches(64), QuantConfig(), quiet=True)
    result = compare(load_model(path), load_model(out), tiny_bert.token_batches(64, seed=1))
    assert result.outputs[0].cosine >= 0.99
    fragile = quantize(path, tmp_path / "all.onnx", tiny_bert.token_batches(64),
                       QuantConfig(keep_fragile_float=False), quiet=True)
    assert not any(r.startswith("kept float") for r in fragile.float_nodes.values())
