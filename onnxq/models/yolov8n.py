"""nudenet's YOLOv8n detector (``nudenet/320n.onnx``, 18 classes), its input pipeline and
its detection metric against FP32.

Licence: the nudenet wheel's METADATA says MIT, but its LICENSE file and the model's own
metadata say AGPL-3.0 (Ultralytics).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from onnxq.models import boxes
from onnxq.models.images import photos
from onnxq.models.metrics import cosine

INPUT_NAME = "images"
SIZE = 320
SCORE, NMS_IOU, MATCH_IOU = 0.25, 0.45, 0.5  # as nudenet decodes; F1 at IoU >= 0.5


def missing() -> str | None:
    """Why the model cannot be built here, or None."""
    return None if importlib.util.find_spec("nudenet") else "pip install --no-deps nudenet==3.4.2"


def export(path: str | Path) -> Path:
    """Copy the wheel's ONNX file (opset 17, dynamic H/W) to ``path``."""
    spec = importlib.util.find_spec("nudenet")
    path = Path(path)
    shutil.copyfile(Path(spec.origin).parent / "320n.onnx", path)
    return path


def preprocess(image_path: Path) -> np.ndarray:
    """As ``nudenet._read_image``: pad right/bottom to a square, resize to 320, RGB / 255."""
    from PIL import Image

    with Image.open(image_path) as opened:
        img = opened.convert("RGB")
        side = max(img.size)
        square = Image.new("RGB", (side, side))
        square.paste(img, (0, 0))
        pixels = np.asarray(square.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def feeds(split: str, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` preprocessed photos of ``split``."""
    return [{INPUT_NAME: preprocess(path)} for path in photos(split, count, seed)]


def decode(output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1 in input pixels), classes and scores of one image's
    ``output0`` [1, 4 + classes, anchors]: score >= 0.25, class-agnostic NMS at 0.45."""
    rows = output[0].T
    scores, classes = rows[:, 4:].max(axis=1), rows[:, 4:].argmax(axis=1)
    keep = scores >= SCORE
    cx, cy, w, h = rows[keep, :4].T
    found = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kept = boxes.nms(found, scores[keep], NMS_IOU)
    return found[kept], classes[keep][kept], scores[keep][kept]


def score(reference: list[list[np.ndarray]], other: list[list[np.ndarray]]) -> dict[str, float]:
    """Detection F1 against FP32's detections (IoU >= 0.5, same class) and the mean cosine
    of the class scores."""
    matched = ref_count = other_count = 0
    cosines = []
    for ref_out, out in zip(reference, other, strict=True):
        ref_boxes, ref_classes, _ = decode(ref_out[0])
        got_boxes, got_classes, _ = decode(out[0])
        matched += boxes.matches(ref_boxes, got_boxes, MATCH_IOU, ref_classes, got_classes)
        ref_count, other_count = ref_count + len(ref_boxes), other_count + len(got_boxes)
        cosines.append(cosine(ref_out[0][0, 4:], out[0][0, 4:]))
    return {"det_f1": boxes.f1(matched, ref_count, other_count),
            "cls_cosine": float(np.mean(cosines)), "fp32_detections": float(ref_count)}
