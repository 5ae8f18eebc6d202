"""Axis-aligned box helpers shared by the detector metrics: IoU, NMS, one-to-one F1."""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4] (x0, y0, x1, y1)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy class-agnostic non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[iou_matrix(boxes[best][None], boxes[order])[0] <= iou]
    return np.asarray(keep, dtype=np.int64)


def matches(ref: np.ndarray, other: np.ndarray, iou: float = 0.5,
            ref_class: np.ndarray | None = None, other_class: np.ndarray | None = None) -> int:
    """How many boxes pair one-to-one (greedy, best IoU first) at IoU >= ``iou`` and the
    same class (when classes are given)."""
    overlap = iou_matrix(ref, other)
    if ref_class is not None:
        overlap = np.where(ref_class[:, None] == other_class[None, :], overlap, 0.0)
    found = 0
    while overlap.size and overlap.max() >= iou:
        i, j = np.unravel_index(np.argmax(overlap), overlap.shape)
        overlap[i, :], overlap[:, j] = 0.0, 0.0
        found += 1
    return found


def f1(matched: int, ref_count: int, other_count: int) -> float:
    """F1 of ``matched`` pairs between ``ref_count`` and ``other_count`` boxes (1 when both
    are empty)."""
    total = ref_count + other_count
    return 1.0 if total == 0 else 2.0 * matched / total
