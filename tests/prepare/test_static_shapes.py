"""FixInputShapesPass and --input-shape: dynamic dims fixed, what does not fit refused."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.errors import OnnxqError
from onnxq.io.model_io import load_model
from onnxq.prepare.static_shapes import FixInputShapesPass, dynamic_inputs


def test_dynamic_dims_are_fixed_and_stale_shapes_dropped(small_cnn):
    model = load_model(small_cnn)
    assert dynamic_inputs(model) == ["image"]
    assert FixInputShapesPass({"image": (1, 3, 32, 32)})(model).modified
    assert dynamic_inputs(model) == []
    assert all(value.shape is None or all(isinstance(d, int) for d in value.shape)
               for node in model.graph for value in node.outputs)


@pytest.mark.parametrize("shapes, needle", [
    ({"image": (1, 3, 32)}, "does not fit the model's input shape"),
    ({"image": (1, 3, 64, 64)}, "does not fit the model's input shape"),
    ({"pixels": (1, 3, 32, 32)}, "names 'pixels', which is no model input"),
])
def test_a_shape_that_does_not_fit_is_refused(small_cnn, shapes, needle):
    with pytest.raises(OnnxqError, match=needle):
        FixInputShapesPass(shapes)(load_model(small_cnn))


def test_input_shape_on_the_command_line(small_cnn, npz, tmp_path):
    out = tmp_path / "fixed.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "--input-shape", "image=1x3x32x32",
                    "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert list(load_model(out).graph.inputs[0].shape) == [1, 3, 32, 32]
    assert isinstance(load_model(out).graph.inputs[0].shape[0], int)
    for bad in ("image=1x3xthirty", "=1x3", "image=0x3x32x32"):
        assert_one_line_error(invoke("quantize", small_cnn, "--calib", npz, "--input-shape",
                                     bad, "-o", tmp_path / "x.onnx"), "--input-shape takes")


def test_a_static_shape_target_without_data_shapes_asks_for_input_shape(small_cnn, tmp_path):
    result = invoke("quantize", small_cnn, "--calib", "none", "--target", "qnn-htp",
                    "-o", tmp_path / "w.onnx")
    assert_one_line_error(result, "--target qnn-htp needs static input shapes",
                          "--input-shape image=1x")
    assert not (tmp_path / "w.onnx").exists()
    assert load_model(small_cnn).graph.inputs[0].dtype == ir.DataType.FLOAT
