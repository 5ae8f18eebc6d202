"""Small ONNX graphs built with onnx.helper for bad, unusual and hostile inputs (no torch).

Every builder returns a valid model unless its name says otherwise; the hostile
variants (external data that points outside the model's folder, nodes out of
order, initializers listed as inputs, ...) are what real users and attackers hand in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "x"
CHANNELS, SIZE = 3, 8


def conv_net(opset: int = 17, dtype: int = TensorProto.FLOAT, seed: int = 0,
             weights_as_inputs: bool = False, reverse_nodes: bool = False,
             bias_name: str = "b1", bias: float = 0.1,
             dynamic_size: bool = False) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> y[N,4]
    (``dynamic_size``: x[N,3,H,W], any image size)."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)

    def const(name: str, *shape: int, scale: float = 0.3) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np_dtype), name)

    inits = [const("w1", 8, CHANNELS, 3, 3),
             numpy_helper.from_array(np.full(8, bias, np_dtype), bias_name),
             const("w2", 8, 8, 1, 1), const("b2", 8), const("w3", 4, 8), const("b3", 4)]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w1", bias_name], ["c1"], "conv1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], "fc", transB=1),
    ]
    if reverse_nodes:
        nodes = nodes[::-1]
    spatial = ["H", "W"] if dynamic_size else [SIZE, SIZE]
    inputs = [helper.make_tensor_value_info(INPUT_NAME, dtype, ["N", CHANNELS, *spatial])]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "conv_net", inputs,
                              [helper.make_tensor_value_info("y", dtype, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def feeds(count: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """``count`` stacked random inputs for :func:`conv_net`."""
    return np.random.default_rng(seed).standard_normal(
        (count, CHANNELS, SIZE, SIZE)).astype(dtype)


def save_external(model: onnx.ModelProto, path: str | os.PathLike,
                  location: str | None = None) -> Path:
    """Save ``model`` with every initializer in one external file (``location``: its name)."""
    path = Path(path)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location or f"{path.name}.data", size_threshold=0)
    return path


def point_external_data(path: str | os.PathLike, location: str) -> None:
    """Rewrite every external-data ``location`` of the saved model at ``path`` (no checks)."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    Path(path).write_bytes(model.SerializeToString())


def huge_runtime_net() -> onnx.ModelProto:
    """x -> Conv, plus a ConstantOfShape whose size (3 x 10^10 x N floats) is known only at
    run time: ORT fails to allocate it on the first sample."""
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 8, 8, 8] y) {
        s = Shape (x)
        k = Constant <value = int64[4] {1, 1, 100000, 100000}> ()
        shape = Mul (s, k)
        big = ConstantOfShape <value = float[1] {1.0}> (shape)
        r = ReduceMean <keepdims = 0> (big)
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = Add (c, r)
    }
    """)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32),
                                                           "w"))
    return model


def bias_overflow_net() -> onnx.ModelProto:
    """:func:`conv_net` with tiny first-layer weights and a bias of 5: fed inputs ~1e-4, its
    int32 bias ``5 / (s_input * s_weight)`` overflows unless the weight scale is widened."""
    model = conv_net(bias=5.0)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w1) * 1e-4, "w1"))
    return model


def if_net(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> If(mean(x) > 0: Conv A + Relu, else: Conv B + Relu) -> Conv -> y: each
    branch's weights in a Constant node of the branch, its input an outer-scope value."""
    rng = np.random.default_rng(seed)

    def branch(name: str) -> onnx.GraphProto:
        w = numpy_helper.from_array((rng.standard_normal((8, CHANNELS, 3, 3)) * 0.3).astype(
            np.float32), f"{name}_w")
        b = numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32),
                                    f"{name}_b")
        nodes = [helper.make_node("Constant", [], [f"{name}_w"], value=w),
                 helper.make_node("Constant", [], [f"{name}_b"], value=b),
                 helper.make_node("Conv", [INPUT_NAME, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                  f"{name}_conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", [f"{name}_c"], [f"{name}_out"], f"{name}_relu")]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
            f"{name}_out", TensorProto.FLOAT, None)])

    head = numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(
        np.float32), "head_w")
    nodes = [helper.make_node("ReduceMean", [INPUT_NAME], ["m"], "mean", keepdims=0),
             helper.make_node("Greater", ["m", "zero"], ["cond"], "positive"),
             helper.make_node("If", ["cond"], ["h"], "branch", then_branch=branch("then"),
                              else_branch=branch("else")),
             helper.make_node("Conv", ["h", "head_w"], ["y"], "head")]
    graph = helper.make_graph(
        nodes, "if_net",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, SIZE, SIZE])],
        [head, numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def loop_net(iterations: int = 3, seed: int = 0) -> onnx.ModelProto:
    """x[1,8,8,8] -> Loop x3 (state -> Conv(outer-scope weight) -> Relu -> state) -> y."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32),
                                "loop_w")
    b = numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "loop_b")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Conv", ["state", "loop_w", "loop_b"], ["c"], "body_conv",
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["next"], "body_relu")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 8, SIZE, SIZE])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("next", TensorProto.FLOAT, [1, 8, SIZE, SIZE])])
    nodes = [helper.make_node("Loop", ["trips", "", INPUT_NAME], ["y"], "loop", body=body)]
    graph = helper.make_graph(
        nodes, "loop_net",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 8, SIZE, SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, SIZE, SIZE])],
        [w, b, numpy_helper.from_array(np.array(iterations, np.int64), "trips")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
