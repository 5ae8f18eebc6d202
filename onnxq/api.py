"""The Python API: quantize a model file with a calibration source."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq.config import QuantConfig
from onnxq.data import Limited
from onnxq.errors import OnnxqError
from onnxq.model_io import load_model, save_model
from onnxq.pipeline import QuantReport, check_reiterable, quantize_model
from onnxq.progress import Progress


def default_output(model_path: str | os.PathLike, config: QuantConfig) -> Path:
    """``model.int8.onnx`` (or ``model.int4.onnx``) next to the input."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.{config.weights}.onnx")


def check_output_path(model_path: Path, output_path: Path) -> None:
    """Refuse to overwrite the input model."""
    same = output_path.exists() and output_path.resolve() == model_path.resolve()
    if same or output_path.absolute() == model_path.absolute():
        raise OnnxqError(f"output path {output_path} is the input model; "
                         "choose another -o path (the input is never overwritten)")


def quantize(model_path: str | os.PathLike, output_path: str | os.PathLike | None,
             calibration: Iterable[Mapping[str, np.ndarray]] | None,
             config: QuantConfig | None = None, quiet: bool = False,
             model: ir.Model | None = None) -> QuantReport:
    """Quantize the model at ``model_path`` and write the QDQ model to ``output_path``.

    ``calibration`` is any iterable of feed dicts ``{input_name: array}`` (each with a
    batch dim), e.g. :class:`onnxq.data.ImageFolder`; at most ``config.samples`` are used.
    It may be None for weight-only quantization (``activations="none"``).
    ``model`` is the model at ``model_path`` when the caller has already loaded it.
    """
    config = config or QuantConfig()
    model_path = Path(model_path)
    output_path = Path(output_path) if output_path else default_output(model_path, config)
    check_output_path(model_path, output_path)
    check_reiterable(calibration, config)
    if model is None:
        model = load_model(model_path)
    total = len(calibration) if hasattr(calibration, "__len__") else config.samples
    if config.samples is not None and total is not None:
        total = min(total, config.samples)
    data = None if calibration is None else Limited(calibration, config.samples)
    report = quantize_model(model, data, config, Progress(quiet), total=total)
    save_model(model, output_path)
    return report
