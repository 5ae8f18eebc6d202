"""KeepReducedDimsPass: keepdims=0 reductions become keepdims=1 + Squeeze, same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from onnxq.prepare.keep_reduced_dims import KeepReducedDimsPass


def _model(opset: int) -> onnx.ModelProto:
    """ReduceMean over axis 1 and ReduceMax over axis 2, both keepdims=0 (axes as
    attributes before opset 18, constant inputs from it on)."""
    axes = "<axes = [1], keepdims = 0>" if opset < 18 else "<keepdims = 0>"
    args = "(x)" if opset < 18 else "(x, axes)"
    text = f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[N, 5, 7] x) => (float[N, 7] y, float[N, 5] z) {{
        axes = Constant <value = int64[1] {{1}}> ()
        y = ReduceMean {axes} {args}
        z = ReduceMax <keepdims = 0, axes = [2]> (x)
    }}
    """
    if opset >= 18:
        text = text.replace("<keepdims = 0, axes = [2]> (x)", "<keepdims = 0> (x, axes2)")
        text = text.replace("axes = Constant", "axes2 = Constant <value = int64[1] {2}> ()\n"
                            "        axes = Constant")
    return onnx.parser.parse_model(text)


def test_reductions_keep_their_dims_and_give_the_same_outputs():
    x = np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32)
    for opset in (17, 18):
        proto = _model(opset)
        model = ir.serde.deserialize_model(proto)
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        assert KeepReducedDimsPass()(model).modified
        ops = [node.op_type for node in model.graph]
        assert ops.count("Squeeze") == 2
        assert all(node.attributes.get_int("keepdims", 1) == 1 for node in model.graph
                   if node.op_type.startswith("Reduce"))
        after = ir.serde.serialize_model(model)
        onnx.checker.check_model(after, full_check=True)
        before = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})
        got = ort.InferenceSession(after.SerializeToString()).run(None, {"x": x})
        assert [o.name for o in after.graph.output] == ["y", "z"]
        for a, b in zip(before, got, strict=True):
            np.testing.assert_array_equal(a, b)


def test_reductions_that_keep_their_dims_are_left_alone():
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 5] x) => (float[N, 1] y) { y = ReduceMean <axes = [1]> (x) }
    """)
    model = ir.serde.deserialize_model(proto)
    assert not KeepReducedDimsPass()(model).modified
