"""Load a QDQ model on a target's own runtime (ORT CPU/CUDA/TensorRT, the QNN HTP simulator,
OpenVINO CPU) and say what precision each layer runs in."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxq.errors import OnnxqError
from onnxq.io.data import Feed
from onnxq.io.runtime import ORT_ERRORS, open_session, optimized_op_types, run, session_options

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm",
               "FusedMatMul", "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger",
               "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits")
"""ORT ops of the optimized graph whose count tells fused (integer) from float layers."""
OPENVINO_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected",
                   "MatMul", "Gemm")
"""OpenVINO layer types whose ``runtimePrecision`` tells whether they run in integers."""
WHEELS = {"qnn-htp": ("onnxruntime_qnn", "onnxruntime-qnn"), "openvino-cpu": ("openvino",
                                                                            "openvino")}


@dataclasses.dataclass
class TargetRun:
    """A model loaded on one runtime: its outputs, how to run it, how its layers execute."""

    runtime: str
    output_names: list[str]
    infer: Callable[[Feed], list[np.ndarray]]
    layers: Counter[str]
    """Layer kind (and precision, where the runtime says it) -> count."""


def missing(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (its wheel is not installed), or None."""
    module, wheel = WHEELS.get(runtime, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        return f"--target runtime {runtime} needs {wheel}: pip install {wheel}"
    providers = {"ort-cuda": "CUDAExecutionProvider",
                 "ort-tensorrt": "TensorrtExecutionProvider"}
    if runtime in providers and providers[runtime] not in ort.get_available_providers():
        return (f"--target runtime {runtime} needs a GPU build of ONNX Runtime with "
                f"{providers[runtime]} (pip install onnxruntime-gpu) and a GPU")
    return None


def _ort(path: Path, runtime: str, threads: int) -> TargetRun:
    if runtime == "ort-cpu":
        session = open_session(str(path), "cpu", threads)
    else:
        options = session_options(threads)
        provider = ("TensorrtExecutionProvider", {"trt_int8_enable": True}) \
            if runtime == "ort-tensorrt" else "CUDAExecutionProvider"
        session = _load(lambda: ort.InferenceSession(str(path), options,
                                                     providers=[provider]), runtime)
    names = [o.name for o in session.get_outputs()]
    return TargetRun(runtime, names, lambda feed: run(session, names, feed),
                     optimized_layers(path))


def optimized_layers(path: Path) -> Counter[str]:
    """Counts of ``COMPUTE_OPS`` in the graph ORT CPU runs (fused or float)."""
    return Counter(op for op in optimized_op_types(path) if op in COMPUTE_OPS)


def _load(make: Callable, runtime: str):
    try:
        return make()
    except ORT_ERRORS as exc:
        reason = " ".join(str(exc).split()).split(" : ")[-1][:200]
        raise OnnxqError(f"{runtime} cannot load the model ({reason})") from None


def _qnn(path: Path) -> TargetRun:
    import onnxruntime_qnn as qnn

    if not any(d.ep_name == qnn.EP_NAME for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(qnn.EP_NAME, qnn.get_library_path())
    options = session_options(1)
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    devices = [d for d in ort.get_ep_devices() if d.ep_name == qnn.EP_NAME]
    options.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path()})
    session = _load(lambda: ort.InferenceSession(str(path), options), "qnn-htp (no CPU "
                    "fallback: an op QNN HTP cannot run, or not a whole DQ -> op -> Q unit)")
    names = [o.name for o in session.get_outputs()]
    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    return TargetRun("qnn-htp", names, lambda feed: run(session, names, feed),
                     Counter({"nodes on QNN HTP, no CPU fallback": nodes}))


def _openvino(path: Path, threads: int) -> TargetRun:
    import openvino as ov

    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads})
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:200]
        raise OnnxqError(f"openvino-cpu cannot load the model ({reason})") from None
    layers: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind in OPENVINO_LAYERS:
            layers[f"{kind} {info['runtimePrecision'].astype(str)}"] += 1
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def infer(feed: Feed) -> list[np.ndarray]:
        result = request.infer(feed)
        return [np.array(result[out]) for out in outputs]

    return TargetRun("openvino-cpu", [out.get_any_name() for out in outputs], infer, layers)


def load_on(path: str | Path, runtime: str, threads: int = 1) -> TargetRun:
    """The model file ``path`` loaded on ``runtime`` (``profile.RUNTIMES``)."""
    reason = missing(runtime)
    if reason is not None:
        raise OnnxqError(reason)
    path = Path(path)
    if runtime == "qnn-htp":
        return _qnn(path)
    if runtime == "openvino-cpu":
        return _openvino(path, threads)
    return _ort(path, runtime, threads)
