"""Per-sample tensors for reconstruction, in memory up to a byte budget and in files beyond.

Reconstruction keeps the live cut tensors of every calibration sample (FP32 and quantized).
A ``SampleStore`` holds them in RAM while they fit ``limit_bytes``; a tensor that would
exceed it is streamed to a file in a temporary folder and read back one batch at a time,
so memory stays bounded whatever the number of samples.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from onnxq.errors import OnnxqError
from onnxq.io.tempfiles import TempDir


class Stored:
    """One tensor over all samples (batch dim first), in memory or in a file."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype,
                 tensor: torch.Tensor | None = None, path: Path | None = None):
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.tensor = tensor
        self.path = path

    @property
    def nbytes(self) -> int:
        """Size of the whole tensor."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def dim(self) -> int:
        """Number of dims, batch included."""
        return len(self.shape)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The samples ``index`` (a new tensor; file-backed data is read, then unmapped)."""
        if self.tensor is not None:
            return self.tensor[index]
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        try:
            return torch.from_numpy(np.ascontiguousarray(mapped[index.numpy()]))
        finally:
            del mapped


class _Writer:
    """Appends batches of one tensor; spills to a file once the store's budget is used.

    With the row count known, the in-memory tensor is allocated once and filled (no
    concatenation, so no transient second copy)."""

    def __init__(self, store: SampleStore, name: str, rows: int | None = None):
        self.store, self.name, self.expected = store, name, rows
        self.buffer: torch.Tensor | None = None
        self.parts: list[torch.Tensor] = []
        self.file = None
        self.path: Path | None = None
        self.rows = 0
        self.row_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None

    def append(self, part: torch.Tensor) -> None:
        part = part.detach().cpu().contiguous()
        if self.row_shape is None:
            self.row_shape, self.dtype = tuple(part.shape[1:]), part.numpy().dtype
            if self.expected is not None:
                self._allocate(part)
        elif tuple(part.shape[1:]) != self.row_shape:
            raise OnnxqError(f"learned rounding needs same-shaped samples; '{self.name}' has "
                             f"{self.row_shape} and {tuple(part.shape[1:])}")
        if self.buffer is not None:
            self.buffer[self.rows:self.rows + part.shape[0]] = part
        elif self.file is None and self.store.reserve(part.nbytes):
            self.parts.append(part)
        else:
            if self.file is None:
                self._spill()
            self.file.write(part.numpy().tobytes())
        self.rows += part.shape[0]

    def _allocate(self, part: torch.Tensor) -> None:
        if self.store.reserve(self.expected * part[0].nbytes):
            self.buffer = torch.empty((self.expected, *self.row_shape), dtype=part.dtype)
        else:
            self._spill()

    def _spill(self) -> None:
        self.path = self.store.new_path()
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
        for part in self.parts:
            self.file.write(part.numpy().tobytes())
            self.store.release(part.nbytes)
        self.parts = []

    def finish(self) -> Stored:
        shape = (self.rows, *self.row_shape)
        if self.file is not None:
            self.file.close()
            stored = Stored(shape, self.dtype, path=self.path)
            weakref.finalize(stored, self.path.unlink, missing_ok=True)
            return stored
        if self.buffer is not None:
            if self.rows != self.expected:
                raise ValueError(f"'{self.name}': {self.rows} rows, {self.expected} expected")
            tensor = self.buffer
        else:
            tensor = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
        stored = Stored(shape, self.dtype, tensor=tensor)
        weakref.finalize(stored, self.store.release, tensor.nbytes)
        return stored


class SampleStore:
    """Where reconstruction keeps per-sample tensors: RAM up to ``limit_bytes`` (None: no
    limit), then files in a temporary folder under ``directory`` (default: the system's)."""

    def __init__(self, limit_bytes: int | None = None, directory: str | None = None):
        self.limit = limit_bytes
        self.directory = directory
        self.used = 0
        self.spilled = 0
        self._folder: TempDir | None = None

    def reserve(self, nbytes: int) -> bool:
        """Count ``nbytes`` as held in memory if they fit the budget."""
        if self.limit is not None and self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` of the budget."""
        self.used -= nbytes

    def new_path(self) -> Path:
        """A fresh file in the store's temporary folder."""
        if self._folder is None:
            self._folder = TempDir("samples", self.directory)
        self.spilled += 1
        return self._folder.path / f"{self.spilled}.bin"

    def collect(self, batches: Iterable[dict[str, torch.Tensor]], rows: int | None = None
                ) -> dict[str, Stored]:
        """Concatenate each named tensor over ``batches`` (batch dim first); ``rows``, when
        known, is their total length."""
        writers: dict[str, _Writer] = {}
        for batch in batches:
            for name, part in batch.items():
                if name not in writers:
                    writers[name] = _Writer(self, name, rows)
                writers[name].append(part)
        if not writers:
            raise OnnxqError("calibration data is empty; pass --calib with at least one sample")
        return {name: writer.finish() for name, writer in writers.items()}

    def close(self) -> None:
        """Delete the spill folder (stored file-backed tensors become unreadable)."""
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
