"""Calibration and validation data sources: image folders, .npz files, random data.

Every source is re-iterable and yields one sample at a time as a feed dict
``{input_name: array with a leading batch dim of 1}``, so nothing grows with the
number of samples.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq.errors import OnnxqError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Feed = dict[str, np.ndarray]
MAX_RANDOM_ELEMENTS = 1 << 28
"""The largest random input generated (elements), far above any real image or sequence."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (None for a dynamic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def model_inputs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are skipped)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = tuple(d if isinstance(d, int) else None for d in (value.shape or ()))
        specs.append(InputSpec(value.name, value.dtype.numpy(), shape))
    return specs


def select(items: Sequence, samples: int | None, seed: int) -> list:
    """Deterministically choose ``samples`` items (all when None), seeded shuffle."""
    items = sorted(items)
    order = np.random.default_rng(seed).permutation(len(items))
    chosen = [items[i] for i in order]
    return chosen if samples is None else chosen[:samples]


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes a tensor: resize shorter side, centre-crop, (pixel - mean) / std."""

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    bgr: bool = False
    nhwc: bool = False

    def __call__(self, path: Path) -> np.ndarray:
        """Load ``path`` and return a float32 array with a batch dim of 1."""
        from PIL import Image

        try:
            with Image.open(path) as img:
                return self._tensor(img.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise OnnxqError(f"cannot read image {path} ({reason}); remove or replace "
                             "that file") from None

    def _tensor(self, img) -> np.ndarray:
        """Resize, crop and normalize an RGB PIL image."""
        from PIL import Image

        w, h = img.size
        scale = self.resize / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        pixels = np.asarray(img, dtype=np.float32)
        if self.bgr:
            pixels = pixels[..., ::-1]
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if not self.nhwc:
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[None])


def label_from_name(path: Path) -> int | None:
    """The class index a file name starts with (``123_...jpg``), or None."""
    match = re.match(r"(\d+)[_\-.]", path.name)
    return int(match.group(1)) if match else None


class ImageFolder:
    """Images in a folder, preprocessed for a single image input."""

    def __init__(self, folder: str | Path, input_name: str, preprocess: ImagePreprocess,
                 samples: int | None = None, seed: int = 0):
        folder = Path(folder)
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise OnnxqError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {folder}; "
                "point --calib at a folder of images or an .npz file"
            )
        self.files = select(files, samples, seed)
        self.input_name = input_name
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Feed]:
        for path in self.files:
            yield {self.input_name: self.preprocess(path)}

    @property
    def labels(self) -> list[int | None]:
        """Class labels parsed from the file names, in iteration order."""
        return [label_from_name(p) for p in self.files]


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (never unpickled), with one-line errors."""
    if not zipfile.is_zipfile(path):
        raise OnnxqError(f"{path} is not an .npz file (not a zip archive); save the "
                         "calibration arrays with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as data:  # a zip archive: an NpzFile
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise OnnxqError(f"cannot read {path} as .npz ({reason}); save numeric arrays with "
                         "numpy.savez (object arrays are not loaded)") from None


class NpzArrays:
    """One .npz file whose arrays are stacked samples (axis 0) keyed by input name."""

    def __init__(self, path: str | Path, samples: int | None = None, seed: int = 0):
        self.path = Path(path)
        arrays = read_npz(self.path)
        if any(arr.ndim == 0 for arr in arrays.values()):
            raise OnnxqError(f"{self.path}: arrays must stack samples on axis 0, but "
                             f"{[n for n, a in arrays.items() if a.ndim == 0]} are scalars")
        counts = {name: arr.shape[0] for name, arr in arrays.items()}
        if not counts or len(set(counts.values())) != 1:
            raise OnnxqError(
                f"{self.path}: arrays must share the sample count on axis 0 (got {counts})"
            )
        self.indices = select(range(next(iter(counts.values()))), samples, seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Feed]:
        arrays = read_npz(self.path)
        for i in self.indices:
            feed = {name: arr[i : i + 1] for name, arr in arrays.items()}
            check_finite(feed, f"row {i} of {self.path}")
            yield feed


class NpzFolder:
    """A folder of .npz files, one sample each (shapes may vary between samples)."""

    def __init__(self, folder: str | Path, inputs: Sequence[InputSpec],
                 samples: int | None = None, seed: int = 0):
        folder = Path(folder)
        files = list(folder.glob("*.npz"))
        if not files:
            raise OnnxqError(f"no .npz files in {folder}; save one sample per .npz file")
        self.files = select(files, samples, seed)
        self.ranks = {spec.name: len(spec.shape) for spec in inputs}

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Feed]:
        for path in self.files:
            feed = read_npz(path)
            check_finite(feed, str(path))
            yield {name: arr[None] if arr.ndim + 1 == self.ranks.get(name) else arr
                   for name, arr in feed.items()}


class RandomData:
    """Random feeds matching the model's inputs (only when asked for explicitly)."""

    def __init__(self, inputs: Sequence[InputSpec], samples: int = 8, seed: int = 0):
        warnings.warn("calibrating on random data: activation ranges will not match real inputs",
                      stacklevel=2)
        self.inputs, self.samples, self.seed = list(inputs), samples, seed

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[Feed]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.samples):
            yield random_feed(rng, self.inputs)


def random_feed(rng: np.random.Generator, inputs: Sequence[InputSpec], dynamic: int = 1) -> Feed:
    """One random sample: normal floats, integers in {0, 1}; a dynamic batch dim is 1 and
    other dynamic dims ``dynamic``."""
    feed = {}
    for spec in inputs:
        shape = tuple(d if d is not None else (1 if i == 0 else dynamic)
                      for i, d in enumerate(spec.shape))
        if np.prod(shape, dtype=np.float64) > MAX_RANDOM_ELEMENTS:
            raise OnnxqError(f"input '{spec.name}' declares shape {list(shape)}, too large "
                             "for random data; pass real data with --calib")
        if np.issubdtype(spec.dtype, np.integer):
            feed[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feed


class Limited:
    """At most ``samples`` feeds of any iterable of feed dicts (the Python API source)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], samples: int | None):
        self.feeds, self.samples = feeds, samples

    def __iter__(self) -> Iterator[Feed]:
        for i, feed in enumerate(self.feeds):
            if self.samples is not None and i >= self.samples:
                return
            yield {k: np.asarray(v) for k, v in feed.items()}


def check_feed(feed: Mapping[str, np.ndarray], inputs: Sequence[InputSpec],
               index: int | None = None, role: str = "calibration") -> None:
    """Raise a one-line error when a feed does not match the model's inputs or holds
    inf/nan (``index``: the sample's position, ``role``: the data's use, for the message)."""
    expected = {spec.name for spec in inputs}
    if set(feed) != expected:
        raise OnnxqError(
            f"{role} data provides inputs {sorted(feed)} but the model expects "
            f"{sorted(expected)}; rename the arrays to the model's input names"
        )
    for spec in inputs:
        arr = feed[spec.name]
        if arr.dtype != spec.dtype:
            raise OnnxqError(
                f"{role} input '{spec.name}' has dtype {arr.dtype}, the model expects "
                f"{spec.dtype}; convert the data (e.g. arr.astype(np.{spec.dtype.name}))"
            )
        shape_ok = arr.ndim == len(spec.shape) and all(
            d is None or d == a for d, a in zip(spec.shape, arr.shape, strict=True))
        if not shape_ok:
            raise OnnxqError(
                f"{role} input '{spec.name}' has shape {list(arr.shape)}, the model "
                f"expects {[d if d is not None else '?' for d in spec.shape]}; "
                "fix the preprocessing options (--size, --layout)"
            )
    check_finite(feed, f"{role} sample {index}" if index is not None else f"a {role} sample")


def check_finite(feed: Mapping[str, np.ndarray], where: str) -> None:
    """Raise a one-line error when a float array of ``feed`` (found at ``where``) holds
    inf/nan: ranges must come from real values."""
    for name, arr in feed.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise OnnxqError(f"input '{name}' of {where} holds {bad} inf/nan value(s) of "
                             f"{arr.size}; remove or clean that sample")
