"""The numeric core's torch twin: the same Q/DQ as ``onnxq.numerics.affine`` on torch tensors
(for learned rounding), held to it by a parity test."""

from __future__ import annotations

import numpy as np
import torch


def per_axis(values: np.ndarray, shape: tuple[int, ...], axis: int | None,
             block_size: int | None = None) -> torch.Tensor:
    """Qparams ``values`` as a float32 tensor that broadcasts against a tensor of ``shape``:
    a scalar per tensor, a vector along ``axis`` per channel, or per block of
    ``block_size`` along ``axis`` repeated to every element (a last block may be partial)."""
    tensor = torch.from_numpy(np.array(values, np.float32))
    if block_size and axis is not None:
        blocks = tensor.reshape([-1 if a == axis else n for a, n in enumerate(shape)])
        return blocks.repeat_interleave(block_size, dim=axis).narrow(axis, 0, shape[axis])
    tensor = tensor.reshape(-1)
    if axis is None or tensor.numel() == 1:
        return tensor.reshape(())
    view = [1] * len(shape)
    view[axis] = -1
    return tensor.reshape(view)


def fake_quantize(x: torch.Tensor, scale: float | torch.Tensor,
                  zero_point: int | torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Q then DQ as ONNX defines them (``x / s``, round half to even, clamp), in place on
    a new tensor; ``scale`` and ``zero_point`` may be tensors that broadcast against ``x``."""
    q = torch.div(x, scale).round_().add_(zero_point).clamp_(qmin, qmax)
    return q.sub_(zero_point).mul_(scale)
