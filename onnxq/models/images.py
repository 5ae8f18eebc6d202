"""Photos for the real-model suite: ../shared/data/imagenet-sample beside the project root."""

from __future__ import annotations

from pathlib import Path

from onnxq.io.data import IMAGE_SUFFIXES, select

IMAGENET_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet-sample"
"""``calib/`` (even classes) calibrates, ``val/`` (odd classes) evaluates."""

SPLITS = {"calib": "calib", "val": "val"}


def photos(split: str, count: int, seed: int = 0) -> list[Path]:
    """``count`` photos of ``split`` ("calib" or "val"), a seeded choice."""
    folder = IMAGENET_SAMPLE / SPLITS[split]
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    return select(files, count, seed)


def missing() -> str | None:
    """Why the photos cannot be used here, or None."""
    return None if (IMAGENET_SAMPLE / "val").is_dir() else f"{IMAGENET_SAMPLE} not found"
