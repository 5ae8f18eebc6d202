"""Loading and atomically saving ONNX models through onnx_ir (external data aware)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx_ir as ir

from onnxq.errors import OnnxqError

EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model (with any external data) into onnx_ir, with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise OnnxqError(f"model file not found: {path} (check the path)")
    if not path.is_file():
        raise OnnxqError(f"model path is not a file: {path} (pass the .onnx file itself)")
    if path.stat().st_size == 0:
        raise OnnxqError(f"model file is empty: {path} (re-export the model)")
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf raises several unrelated types
        raise OnnxqError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); "
            "re-export it, or if it is over 2 GB save it with external data"
        ) from None
    if len(model.graph) == 0 and not model.graph.outputs:
        raise OnnxqError(f"{path} holds no ONNX graph (is it really an .onnx model?)")
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and not Path(tensor.path).exists():
            raise OnnxqError(
                f"external data file {tensor.path} of {path} is missing; "
                "keep the .data file next to the model"
            )
    return model


def model_nbytes(model: ir.Model) -> int:
    """Total bytes held by the model's initializers."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)


def save_model(model: ir.Model, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically; models near the 2 GB protobuf limit get external data."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OnnxqError(f"output folder does not exist: {directory} (create it first)")
    if not os.access(directory, os.W_OK):
        raise OnnxqError(f"output folder is not writable: {directory} (choose another -o path)")
    external = model_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    with tempfile.TemporaryDirectory(dir=directory, prefix=".onnxq-") as tmp:
        tmp_path = Path(tmp) / path.name
        data_name = path.name + ".data"
        if external:
            ir.save(model, tmp_path, external_data=data_name)
            os.replace(Path(tmp) / data_name, directory / data_name)
        else:
            ir.save(model, tmp_path)
        os.replace(tmp_path, path)
    return path
