"""EmitQDQPass on its own: what it writes, that ORT runs it close to FP32, its postcondition,
and an empty plan."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.calibrate.stream import calibrate
from onnxq.config import QuantConfig
from onnxq.emit.qdq import EmitQDQPass
from onnxq.io.model_io import load_model
from onnxq.models.synthetic import image_feeds
from onnxq.numerics.affine import QTYPES, dequantize
from onnxq.numerics.affine import quantize as quantize_array
from onnxq.plan.annotate import annotate
from onnxq.plan.qparams import resolve_activations, resolve_weights
from onnxq.prepare.stage import prepare
from onnxq.spec import QuantPlan


def _planned(small_cnn):
    model = load_model(small_cnn)
    config = QuantConfig(samples=8)
    prepare(model, config)
    plan = annotate(model, config)
    activations = resolve_activations(plan, calibrate(model, plan, image_feeds(8)))
    return model, plan, activations, resolve_weights(model, plan)


def test_every_planned_tensor_gets_its_qdq_and_ort_runs_it_close_to_fp32(small_cnn):
    model, plan, activations, weights = _planned(small_cnn)
    assert EmitQDQPass(plan, activations, weights)(model).modified
    nodes = list(model.graph)
    quantizers = {n.name for n in nodes if n.op_type == "QuantizeLinear"}
    assert quantizers == {f"{name}_QuantizeLinear" for name in plan.uses if name in activations}
    integer = {name: value.const_value.dtype for name, value in model.graph.initializers.items()}
    for name in plan.weights:
        assert name not in integer and integer[f"{name}_quantized"] == ir.DataType.INT8
    for name in plan.biases:
        assert integer[f"{name}_quantized"] == ir.DataType.INT32
    assert all("scale" in n.doc_string for n in nodes
               if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feed = image_feeds(1, 5)[0]
    expected = ort.InferenceSession(str(small_cnn)).run(None, feed)[0]
    got = ort.InferenceSession(proto.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feed)[0]
    cosine = float(np.sum(expected * got) / np.linalg.norm(expected) / np.linalg.norm(got))
    assert cosine > 0.99


def test_a_quantize_read_by_anything_but_a_dequantize_breaks_the_postcondition(small_cnn):
    model, plan, activations, weights = _planned(small_cnn)
    EmitQDQPass(plan, activations, weights)(model)
    q = next(n for n in model.graph if n.op_type == "QuantizeLinear")
    stray = ir.node("Identity", [q.outputs[0]], name="stray")
    model.graph.append(stray)
    with pytest.raises(ir.passes.PostconditionError, match="not a DQ"):
        EmitQDQPass(QuantPlan(), {}, {}).ensures(model)


def test_an_empty_plan_changes_nothing(small_cnn):
    model = load_model(small_cnn)
    before = ir.to_proto(model).SerializeToString()
    assert not EmitQDQPass(QuantPlan().bind(model), {}, {})(model).modified
    assert ir.to_proto(model).SerializeToString() == before


def _lookup_model(table: np.ndarray) -> ir.Model:
    """ids [2, 3] (int64) -> Gather(table, ids) -> rows [2, 3, D], the graph output."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")], "g",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2, 3])],
        [onnx.helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, [2, 3, 4])],
        [onnx.numpy_helper.from_array(table, "table")])
    return ir.from_proto(onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("axis", [1, 0])
def test_a_table_lookup_gathers_int8_rows_then_dequantizes_them(axis):
    table = np.random.default_rng(4).standard_normal((10, 4)).astype(np.float32)
    model = _lookup_model(table)
    plan = annotate(model, QuantConfig.from_preset("fast", activations="none"))
    assert plan.weights["table"].axis == 1  # one scale per column
    if axis == 0:  # an edited plan: per-row scales would have to be gathered too
        plan.weights["table"] = dataclasses.replace(plan.weights["table"], axis=0)
    weights = resolve_weights(model, plan)
    assert EmitQDQPass(plan, {}, weights)(model).modified
    lookup = next(n for n in model.graph if n.op_type == "Gather")
    moved = lookup.inputs[0].name == "table_quantized"
    assert moved == (axis == 1)
    if moved:  # int8 rows, then their own DQ, and the output keeps its name
        dq = next(iter(lookup.outputs[0].uses()))[0]
        assert dq.op_type == "DequantizeLinear" and dq.attributes.get_int("axis") == 2
        assert model.graph.outputs[0].name == "rows" and model.graph.outputs[0].producer() is dq
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    ids = np.array([[0, 3, 9], [9, 1, 0]], np.int64)
    got = ort.InferenceSession(proto.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    params = weights["table"]
    expected = dequantize(quantize_array(table, params.scale, params.zero_point,
                                         QTYPES["int8"], params.axis),
                          params.scale, params.zero_point, params.axis)[ids]
    np.testing.assert_array_equal(got, expected)
