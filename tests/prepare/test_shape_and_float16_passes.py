"""LocalizeShapePass and Float16ToFloat32Pass on their own: what they change, that the
model computes the same, and the cases they must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxq.prepare.float16_to_float32 import Float16ToFloat32Pass
from onnxq.prepare.localize_shape import LocalizeShapePass


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _flatten_model(gathered_axis: int) -> onnx.ModelProto:
    """Conv on x [batch, 3, 4, 4], then Reshape(y, [Shape(x)[axis], -1])."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "axis"], ["dim"], name="gather"),
        helper.make_node("Unsqueeze", ["dim", "zero"], ["dim1"], name="unsqueeze"),
        helper.make_node("Concat", ["dim1", "minus_one"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["y", "target"], ["out"], name="reshape"),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(gathered_axis, np.int64), "axis"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def test_shape_of_the_input_moves_to_the_reshaped_tensor():
    proto = _flatten_model(gathered_axis=0)
    model = ir.from_proto(proto)
    assert LocalizeShapePass()(model).modified
    shape = next(node for node in model.graph if node.op_type == "Shape")
    assert shape.inputs[0].name == "y"  # reads the Reshape's own input: x dies after the Conv
    after = ir.to_proto(model)
    onnx.checker.check_model(after, full_check=True)
    x = np.random.default_rng(1).standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(after, {"x": x}), _run(proto, {"x": x}))


def test_a_static_dim_that_differs_keeps_its_shape_source():
    model = ir.from_proto(_flatten_model(gathered_axis=1))  # x has 3 channels, y has 8
    assert not LocalizeShapePass()(model).modified
    assert next(node for node in model.graph if node.op_type == "Shape").inputs[0].name == "x"


def _float16_model() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
             helper.make_node("Add", ["h", "b"], ["s"], name="add"),
             helper.make_node("Cast", ["s"], ["c"], to=TensorProto.FLOAT16, name="cast"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float16), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float16), "b")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float16_computes_in_float32_behind_an_unchanged_interface():
    proto = _float16_model()
    model = ir.from_proto(proto)
    assert Float16ToFloat32Pass()(model).modified
    assert all(v.dtype == ir.DataType.FLOAT for v in model.graph.initializers.values())
    assert [v.dtype for v in [*model.graph.inputs, *model.graph.outputs]] == \
        [ir.DataType.FLOAT16, ir.DataType.FLOAT16]
    cast = next(node for node in model.graph if node.name == "cast")
    assert cast.attributes.get_int("to") == ir.DataType.FLOAT  # float16 targets follow
    after = ir.to_proto(model)
    onnx.checker.check_model(after, full_check=True)
    x = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float16)
    got = _run(after, {"x": x})
    exact = np.maximum(x.astype(np.float32) @ numpy_helper.to_array(proto.graph.initializer[0])
                       .astype(np.float32) + numpy_helper.to_array(proto.graph.initializer[1]), 0)
    assert got.dtype == np.float16
    # float32 inside: within float16's rounding of the exact result, at least as close as fp16
    assert np.abs(got.astype(np.float32) - exact).max() <= \
        np.abs(_run(proto, {"x": x}).astype(np.float32) - exact).max() + 1e-3


def test_a_float32_model_is_left_alone():
    proto = _float16_model()
    for tensor in proto.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)
                                                .astype(np.float32), tensor.name))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT
    proto.graph.node[2].attribute[0].i = TensorProto.FLOAT
    assert not Float16ToFloat32Pass()(ir.from_proto(proto)).modified
