"""Rendered text for the OCR models: words from the Python stdlib's docstrings drawn with
Pillow in DejaVu fonts (Debian ``fonts-dejavu-core``)."""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
         "DejaVuSans-Oblique.ttf", "DejaVuSerif-Bold.ttf")
TEXT_SOURCES = ("textwrap.py", "argparse.py", "json/__init__.py", "csv.py", "shutil.py",
                "calendar.py", "difflib.py", "pathlib.py", "tempfile.py", "zipfile.py")


def missing() -> str | None:
    """Why text cannot be rendered here, or None."""
    return None if fonts() else f"no DejaVu fonts in {FONT_DIR}: apt-get install fonts-dejavu-core"


def fonts() -> list[Path]:
    """The DejaVu faces installed here."""
    return [FONT_DIR / name for name in FONTS if (FONT_DIR / name).is_file()]


@functools.cache
def words() -> tuple[str, ...]:
    """Words of the stdlib docstrings (letters, digits and common punctuation), in order."""
    found: list[str] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in TEXT_SOURCES:
        path = stdlib / name
        if not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += re.findall(r"[A-Za-z0-9][A-Za-z0-9'.,:;()/-]{1,15}", node.value)
    return tuple(found)


def phrase(rng: np.random.Generator, count: int) -> str:
    """``count`` consecutive docstring words from a random place; 15 % are a number, a date
    or a phone number instead."""
    if rng.random() < 0.15:
        kind = rng.integers(3)
        if kind == 0:
            return f"{rng.integers(1, 100000)}.{rng.integers(0, 100):02d}"
        if kind == 1:
            return f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1950, 2030)}"
        return f"+{rng.integers(1, 99)} {rng.integers(100, 999)} {rng.integers(1000, 9999)}"
    pool = words()
    start = int(rng.integers(0, len(pool) - count))
    return " ".join(pool[start:start + count])


def font(rng: np.random.Generator, low: int, high: int):
    """A random DejaVu face at a random pixel size in [low, high]."""
    from PIL import ImageFont

    faces = fonts()
    face = faces[rng.integers(len(faces))]
    return ImageFont.truetype(str(face), int(rng.integers(low, high + 1)))
