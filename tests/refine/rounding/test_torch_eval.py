"""The torch evaluator against ONNX Runtime: single ops on random inputs and a whole Lite0 block."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from onnxq.plan.qparams import QParams
from onnxq.refine.rounding.torch_block import ActivationQuant
from onnxq.refine.rounding.torch_ops import OPS, Unsupported, run_node

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def ints(*values):
    return np.array(values, np.int64)


# (op, inputs, constant input indices, attributes)
CASES = [
    ("Conv", [rand(2, 4, 9, 9), rand(6, 4, 3, 3), rand(6)], {1, 2},
     {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ("Conv", [rand(1, 6, 8, 8), rand(6, 1, 3, 3)], {1},
     {"group": 6, "pads": [1, 1, 1, 1], "dilations": [1, 1]}),
    ("Conv", [rand(1, 4, 10, 10), rand(4, 2, 3, 3)], {1}, {"group": 2, "dilations": [2, 2]}),
    ("ConvTranspose", [rand(1, 4, 5, 5), rand(4, 3, 2, 2), rand(3)], {1, 2}, {"strides": [2, 2]}),
    ("Gemm", [rand(3, 5), rand(4, 5), rand(4)], {1, 2}, {"transB": 1, "alpha": 0.5}),
    ("MatMul", [rand(2, 3, 5), rand(5, 4)], {1}, {}),
    ("Add", [rand(2, 3, 4), rand(3, 4)], set(), {}),
    ("Sub", [rand(2, 3), rand(2, 3)], set(), {}),
    ("Mul", [rand(2, 3), rand(3)], set(), {}),
    ("Div", [rand(2, 3), np.abs(rand(2, 3)) + 0.5], set(), {}),
    ("Pow", [np.abs(rand(2, 3)) + 0.1, np.array(2.0, np.float32)], {1}, {}),
    ("Clip", [rand(2, 3, 4) * 5, np.array(0.0, np.float32), np.array(6.0, np.float32)], {1, 2},
     {}),
    ("Relu", [rand(2, 5)], set(), {}),
    ("Sigmoid", [rand(2, 5)], set(), {}),
    ("Tanh", [rand(2, 5)], set(), {}),
    ("Erf", [rand(2, 5)], set(), {}),
    ("Sqrt", [np.abs(rand(2, 5))], set(), {}),
    ("HardSwish", [rand(2, 5) * 4], set(), {}),
    ("HardSigmoid", [rand(2, 5) * 4], set(), {"alpha": 0.3}),
    ("LeakyRelu", [rand(2, 5)], set(), {"alpha": 0.2}),
    ("GlobalAveragePool", [rand(2, 3, 5, 5)], set(), {}),
    ("AveragePool", [rand(1, 2, 7, 7)], set(), {"kernel_shape": [3, 3], "strides": [2, 2],
                                                 "pads": [1, 1, 1, 1]}),
    ("MaxPool", [rand(1, 2, 7, 7)], set(), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("Reshape", [rand(2, 3, 4), ints(0, -1)], {1}, {}),
    ("Flatten", [rand(2, 3, 4)], set(), {"axis": 1}),
    ("Transpose", [rand(2, 3, 4)], set(), {"perm": [2, 0, 1]}),
    ("Concat", [rand(2, 3), rand(2, 5)], set(), {"axis": 1}),
    ("Squeeze", [rand(2, 1, 4), ints(1)], {1}, {}),
    ("Unsqueeze", [rand(2, 4), ints(0, 3)], {1}, {}),
    ("Slice", [rand(4, 6), ints(1, 0), ints(3, 10), ints(0, 1)], {1, 2, 3}, {}),
    ("Pad", [rand(1, 2, 3, 3), ints(0, 0, 1, 2, 0, 0, 2, 1)], {1}, {}),
    ("Softmax", [rand(2, 7)], set(), {"axis": -1}),
    ("LayerNormalization", [rand(2, 3, 8), rand(8), rand(8)], {1, 2}, {"axis": -1}),
    ("ReduceMean", [rand(2, 3, 8), ints(-1)], {1}, {"keepdims": 1}),
    ("Gather", [rand(10, 4), ints(3, 0, 9, 3).reshape(2, 2)], {1}, {"axis": 0}),
    ("Shape", [rand(2, 3, 4)], set(), {}),
    ("Cast", [rand(2, 3) * 10], set(), {"to": TensorProto.INT64}),
    ("ConstantOfShape", [ints(2, 3)], {0}, {"value": helper.make_tensor(
        "v", TensorProto.FLOAT, [1], [0.5])}),
    ("Expand", [rand(3, 1), ints(2, 1, 4)], {1}, {}),
    ("Range", [np.array(1.0, np.float32), np.array(9.0, np.float32),
               np.array(1.5, np.float32)], {0, 1, 2}, {}),
    ("Split", [rand(2, 7), ints(3, 4)], {1}, {"axis": 1}),
    ("Split", [rand(2, 7, 3)], set(), {"axis": 1, "num_outputs": 2}),
    ("Resize", [rand(1, 2, 3, 4), np.zeros(0, np.float32), np.array([1, 1, 2, 2], np.float32)],
     {1, 2}, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
              "nearest_mode": "floor"}),
    ("Resize", [rand(1, 2, 3, 4), np.zeros(0, np.float32), np.array([1, 1, 2, 1.5], np.float32)],
     {1, 2}, {"mode": "linear"}),
]
OUTPUTS = {"Split": 2}
"""Ops whose cases have more than one output."""


def _single_node_model(op, inputs, constants, attrs):
    names = [f"in{i}" for i in range(len(inputs))]
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                  a.shape)
                    for i, (n, a) in enumerate(zip(names, inputs, strict=True))
                    if i not in constants]
    initializers = [onnx.numpy_helper.from_array(a, n)
                    for i, (n, a) in enumerate(zip(names, inputs, strict=True)) if i in constants]
    outputs = [f"out{i}" for i in range(OUTPUTS.get(op, 1))]
    node = helper.make_node(op, names, outputs, **attrs)
    graph = helper.make_graph([node], "g", graph_inputs, [
        helper.make_empty_tensor_value_info(name) for name in outputs], initializers)
    opset = 18 if op in ("ReduceMean", "Pad", "Split") else 17
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("op, inputs, constants, attrs", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op_matches_onnxruntime(op, inputs, constants, attrs):
    proto = _single_node_model(op, inputs, constants, attrs)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {f"in{i}": a for i, a in enumerate(inputs) if i not in constants}
    node = ir.from_proto(proto).graph.node(0)
    got = run_node(node, [torch.from_numpy(a) for a in inputs])
    for mine, expected in zip(got, session.run(None, feeds), strict=True):
        assert tuple(mine.shape) == expected.shape
        np.testing.assert_allclose(mine.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_every_registered_op_is_tested():
    assert {case[0] for case in CASES} | {"Identity", "Constant"} >= set(OPS)


def test_unknown_op_is_reported_not_crashed():
    node = ir.node("Softplus", [ir.Value(name="x")])
    with pytest.raises(Unsupported, match="Softplus"):
        run_node(node, [torch.zeros(2)])


def test_activation_fake_quant_matches_onnx_qdq_and_passes_gradient_inside_the_grid():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32) * 3
    x.flat[:5] = [2.5 * 0.05, -1.5 * 0.05, 100.0, -100.0, 0.0]  # ties and far outside
    quant = ActivationQuant(QParams(np.array(0.05, np.float32), np.array(130), "uint8"))
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4, 16, 16] x) => (float[2, 4, 16, 16] y) {
        s = Constant <value = float {0.05}> ()
        z = Constant <value = uint8 {130}> ()
        q = QuantizeLinear (x, s, z)
        y = DequantizeLinear (q, s, z)
    }"""
    session = ort.InferenceSession(onnx.parser.parse_model(text).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    tensor = torch.from_numpy(x).requires_grad_()
    got = quant(tensor)
    np.testing.assert_array_equal(got.detach().numpy(), expected)
    got.sum().backward()
    inside = (x > (0 - 130 - 0.5) * 0.05) & (x < (255 - 130 + 0.5) * 0.05)
    np.testing.assert_array_equal(tensor.grad.numpy(), inside.astype(np.float32))
