"""Annotation, calibration and QDQ emission on small models, checked against FP32 and ORT."""

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnxq.models import tiny_bert
from onnxq.models.synthetic import image_feeds
from onnxq.passes import EmpiricalBiasCorrectionPass

from onnxq.annotate import annotate
from onnxq.api import quantize
from onnxq.calibration import channel_means
from onnxq.config import QuantConfig
from onnxq.model_io import load_model
from onnxq.pipeline import prepare
from onnxq.qparams import resolve_weights, weight_qparams
from onnxq.validate import compare


def planned(path, config=QuantConfig()):
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
    (concat,) = by_op(model, "Concat")
    assert len({plan.group(v.name) for v in concat.inputs} | {plan.group(concat.outputs[0].name)}) == 1
    (add,) = by_op(model, "Add")
    assert all(v.name in plan.activations for v in add.inputs)


@pytest.mark.parametrize("kwargs, min_sqnr, opset", [
    ({}, 40.0, 17),
    ({"activations": "int8"}, 40.0, 17),
    ({"activations": "uint16", "weights": "int8"}, 40.0, 21),
    ({"weights": "int4"}, 25.0, 21),
    ({"observer": "mse"}, 35.0, 17),
])
def test_quantized_small_cnn_is_valid_smaller_and_close(small_cnn, tmp_path, kwargs, min_sqnr, opset):
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
