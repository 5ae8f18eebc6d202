"""Weights memory-mapped from a model's external data, held one at a time.

onnx_ir maps an external tensor's file when its array is first read and keeps the mapping;
every page read then counts in the process's resident memory until the tensor goes.  A
pass over all the weights of a model larger than memory hands each weight's pages back
after its use: the bytes stay in the page cache and are read again from the file when
needed, so resident memory holds the weight in use, not the model.
"""

from __future__ import annotations

import mmap

import onnx_ir as ir


def release_pages(tensor: ir.TensorProtocol | None) -> None:
    """Drop the resident pages of a memory-mapped external tensor (nothing for others)."""
    if isinstance(tensor, ir.ExternalTensor) and tensor.raw is not None:
        tensor.raw.madvise(mmap.MADV_DONTNEED)
