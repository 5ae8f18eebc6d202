"""Model loading and saving: external data for large models, atomic writes."""

import numpy as np
import onnxruntime as ort
import pytest

from onnxq.errors import OnnxqError
from onnxq.io import model_io
from onnxq.io.model_io import load_model, save_model
from onnxq.models.synthetic import image_feeds


def test_large_models_are_saved_with_external_data_and_reload(small_cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    out = save_model(load_model(small_cnn), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 1000
    assert out.stat().st_size < small_cnn.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxq-")]
    feed = image_feeds(1)[0]
    expected = ort.InferenceSession(str(small_cnn)).run(None, feed)[0]
    np.testing.assert_array_equal(ort.InferenceSession(str(out)).run(None, feed)[0], expected)
    reloaded = load_model(out)
    assert len(reloaded.graph) == len(load_model(small_cnn).graph)


def test_missing_external_data_is_named(small_cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    save_model(load_model(small_cnn), tmp_path / "big.onnx")
    (tmp_path / "big.onnx.data").unlink()
    with pytest.raises(OnnxqError, match=r"external data 'big.onnx.data' .* is missing"):
        load_model(tmp_path / "big.onnx")


def test_empty_file_and_folder_are_rejected(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(OnnxqError, match="empty"):
        load_model(tmp_path / "empty.onnx")
    with pytest.raises(OnnxqError, match="not a file"):
        load_model(tmp_path)


def test_checker_reads_no_external_data_of_constant_nodes(tmp_path, monkeypatch):
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    from onnxq.io.model_io import check_model

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    (tmp_path / "w.bin").write_bytes(w.raw_data)
    external_data_helper.set_external_data(w, "w.bin")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=w),
         helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17)]).SerializeToString())
    monkeypatch.chdir("/")  # the checker resolved such tensors against the working folder
    check_model(load_model(path), path)
