"""ONNX Runtime sessions: provider choice, sessions on in-memory or large models."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import OnnxqError
from onnxq.model_io import EXTERNAL_DATA_THRESHOLD, model_nbytes


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
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def make_session(model: ir.Model, device: str = "cpu", threads: int = 0,
                 optimize: bool = True) -> ort.InferenceSession:
    """An ORT session on an in-memory model (saved with external data when large)."""
    options = session_options(threads, optimize)
    provider_list = providers(device)
    try:
        if model_nbytes(model) <= EXTERNAL_DATA_THRESHOLD:
            data = ir.to_proto(model).SerializeToString()
            return ort.InferenceSession(data, options, providers=provider_list)
        with tempfile.TemporaryDirectory(prefix="onnxq-session-") as tmp:
            path = Path(tmp) / "model.onnx"
            ir.save(model, path, external_data="model.onnx.data")
            return ort.InferenceSession(str(path), options, providers=provider_list)
    except (ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:
        reason = str(exc).splitlines()[0].split(" : ")[-1]
        if optimize and "qdq_transformer" in reason:  # ORT's QDQ optimizer, not the model
            warnings.warn(f"ONNX Runtime's QDQ graph optimizer failed ({reason}); running "
                          "this model with graph optimizations off", stacklevel=2)
            return make_session(model, device, threads, optimize=False)
        raise OnnxqError(f"ONNX Runtime cannot load the model ({reason}); calibration needs a "
                         "model ORT runs: register custom-op libraries or export standard ops"
                         ) from None
