"""ONNX Runtime sessions: provider choice, sessions on in-memory or large models."""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import OnnxqError
from onnxq.io.model_io import EXTERNAL_DATA_THRESHOLD, external_folder, model_nbytes, to_proto
from onnxq.io.tempfiles import TempDir

ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in (
    "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
    "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name))
"""What ONNX Runtime raises for a model or input it cannot handle."""

_SOURCE_LOCATION = re.compile(r"\S+\.(?:cc|h|cpp):\d+ (?:[^()]*\([^()]*\) )?")
"""ORT's C++ source location (and function signature) before a message."""

ort.set_default_logger_severity(4)  # errors reach the user as one line, not as ORT's log


def _torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def providers(device: str) -> list[str]:
    """Execution providers for ``device`` ('cpu' or 'cuda'), with a clear error when missing.

    With a CUDA torch but a CPU-only onnxruntime, ORT stages run on the CPU (with a
    warning) and torch reconstruction still uses the GPU.
    """
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if not _torch_has_cuda():
            raise OnnxqError("--device cuda needs a CUDA GPU with onnxruntime-gpu "
                             "(pip install onnxruntime-gpu) or a CUDA build of torch; "
                             "or use --device cpu")
        warnings.warn("onnxruntime has no CUDA provider (pip install onnxruntime-gpu): "
                      "calibration and validation run on the CPU, reconstruction on the GPU",
                      stacklevel=2)
    return ["CPUExecutionProvider"]


def session_options(threads: int = 0, optimize: bool = True) -> ort.SessionOptions:
    """Session options with ``threads`` intra-op threads (0: ORT's default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def make_session(model: ir.Model, device: str = "cpu", threads: int = 0,
                 optimize: bool = True) -> ort.InferenceSession:
    """An ORT session on an in-memory model.

    Weights still in the model's external data are read by ORT from their folder; a model
    whose in-memory weights are large is saved to a temporary folder first.
    """
    if model_nbytes(model, external=False) > EXTERNAL_DATA_THRESHOLD:
        with TempDir("session") as tmp:
            path = tmp / "model.onnx"
            ir.save(model, path, external_data="model.onnx.data")
            return open_session(str(path), device, threads, optimize)
    folder = external_folder(model)
    config = {} if folder is None else {
        "session.model_external_initializers_file_folder_path": folder}
    return open_session(to_proto(model).SerializeToString(), device, threads, optimize, config)


def open_session(source: bytes | str, device: str = "cpu", threads: int = 0,
                 optimize: bool = True, config: dict[str, str] | None = None
                 ) -> ort.InferenceSession:
    """An ORT session on a serialized model or a model file, with one-line errors; when
    ORT's QDQ graph optimizer fails (not the model), optimizations are turned off."""
    options = session_options(threads, optimize)
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    try:
        return ort.InferenceSession(source, options, providers=providers(device))
    except ORT_ERRORS as exc:
        reason = str(exc).splitlines()[0].split(" : ")[-1]
        if optimize and "qdq_transformer" in reason:  # ORT's QDQ optimizer, not the model
            warnings.warn(f"ONNX Runtime's QDQ graph optimizer failed ({reason}); running "
                          "this model with graph optimizations off", stacklevel=2)
            return open_session(source, device, threads, False, config)
        raise OnnxqError(f"ONNX Runtime cannot load the model ({reason}); onnxq needs a model "
                         "ORT runs: register custom-op libraries or export standard ops"
                         ) from None

def run(session: ort.InferenceSession, names: list[str] | None, feed: dict) -> list:
    """``session.run`` with ORT's run-time failures (allocation, shape errors) as one line."""
    try:
        return session.run(names, feed)
    except ORT_ERRORS as exc:
        reason = " ".join(str(exc).split()).split("Status Message: ")[-1].split(" : ")[-1]
        reason = _SOURCE_LOCATION.sub("", reason)[:200]
        raise OnnxqError(f"ONNX Runtime failed running the model on the data ({reason}); "
                         "check that the data fits the model (shapes, value ranges)") from None


def optimized_op_types(path: str | Path) -> list[str]:
    """Op types of the graph ORT CPU actually runs (its optimized graph, 1 thread)."""
    with tempfile.TemporaryDirectory(prefix="onnxq-opt-") as tmp:
        options = session_options(1)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
        return [node.op_type for node in optimized.graph.node]
