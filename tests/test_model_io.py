"""Model loading and saving: external data for large models, atomic writes."""

import numpy as np
import onnxruntime as ort
import pytest
from onnxq.models.synthetic import image_feeds

from onnxq import model_io
from onnxq.errors import OnnxqError
from onnxq.model_io import load_model, save_model


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
    with pytest.raises(OnnxqError, match="external data 'big.onnx.data' .* is missing"):
        load_model(tmp_path / "big.onnx")


def test_empty_file_and_folder_are_rejected(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(OnnxqError, match="empty"):
        load_model(tmp_path / "empty.onnx")
    with pytest.raises(OnnxqError, match="not a file"):
        load_model(tmp_path)
