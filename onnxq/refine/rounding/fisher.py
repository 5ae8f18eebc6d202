"""How much each element of a cut tensor matters to the network's output (diagonal Fisher).

BRECQ weights a block's reconstruction error by the squared gradient of the network's loss
at the block output.  Without labels, the loss here is the network's own output
distribution: for a logits output (2-D) the Hessian of KL(p_fp32 || p) at the FP32 point is
``diag(p) - p p^T``; for any other output, the squared error's identity.  One random
projection ``r`` with ``E[r r^T]`` equal to that Hessian, pulled back through the FP32
network (``g = J^T r``), gives per element ``E[g^2]`` = the Gauss-Newton diagonal.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_ir as ir
import torch

from onnxq.progress import Progress
from onnxq.refine.rounding.blocks import Block
from onnxq.refine.rounding.sample_store import SampleStore, Stored
from onnxq.refine.rounding.torch_block import TorchBlock
from onnxq.spec import QuantPlan


def loss_projection(output: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random ``r`` whose covariance is the output loss's Hessian (see module docstring)."""
    noise = torch.randn(output.shape, generator=generator).to(output.device)
    if output.dim() != 2:
        return noise
    root = torch.softmax(output.detach(), dim=1).sqrt()
    return root * noise - root ** 2 * (root * noise).sum(dim=1, keepdim=True)


def output_sensitivity(model: ir.Model, plan: QuantPlan, inputs: dict[str, Stored],
                       names: list[str], store: SampleStore, batch: int, device: str,
                       seed: int, reference: dict[str, np.ndarray] | None = None,
                       progress: Progress | None = None
                       ) -> tuple[dict[str, Stored], dict[str, float]]:
    """Squared output gradients of the tensors ``names`` for every sample, and each one's
    mean over all samples and elements (to normalize a weighted loss with).  A tensor the
    outputs do not depend on is left out (its loss stays plain MSE)."""
    graph = model.graph
    network = TorchBlock(Block(list(graph), [v.name for v in graph.inputs],
                               [v.name for v in graph.outputs], []), plan, {}, {},
                         learn_bias=False, device=device, reference=reference)
    generator = torch.Generator().manual_seed(seed)
    total = next(iter(inputs.values())).shape[0]
    sums = dict.fromkeys(names, 0.0)

    bar = progress or Progress(quiet=True)

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for start in bar(range(0, total, batch), "fisher weights"):
            index = torch.arange(start, min(start + batch, total))
            feed = {n: inputs[n].take(index).to(device) for n in network.block.inputs}
            for t in feed.values():
                if t.is_floating_point():
                    t.requires_grad_(True)
            env = network(feed, quantized=False)
            outputs = [env[v.name] for v in graph.outputs if env[v.name].is_floating_point()]
            projected = sum((o * loss_projection(o, generator)).sum() for o in outputs)
            grads = torch.autograd.grad(projected, [env[n] for n in names], allow_unused=True)
            squares = {}
            for name, grad in zip(names, grads, strict=True):
                square = torch.zeros_like(env[name]) if grad is None else grad.detach() ** 2
                sums[name] += float(square.sum())
                squares[name] = square
            yield squares

    stored = store.collect(batches(), rows=total)
    sensitive = [n for n in names if sums[n] > 0]
    return ({n: stored[n] for n in sensitive},
            {n: sums[n] / (stored[n].nbytes // stored[n].dtype.itemsize) for n in sensitive})
