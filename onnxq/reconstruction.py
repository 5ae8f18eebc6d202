"""Learned rounding by reconstruction: AdaRound per layer, BRECQ per block, QDrop.

Blocks are processed in graph order.  Two caches hold the live tensors at the current cut
for every calibration sample: the FP32 network's and the quantized network's (upstream
blocks already rounded as learned).  Only the current block is resident as a torch module.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
import torch

from onnxq.calibration import collect_outputs
from onnxq.data import Feed
from onnxq.errors import OnnxqError
from onnxq.progress import Progress
from onnxq.qparams import QParams
from onnxq.spec import QuantPlan
from onnxq.subgraphs import Block, cut_blocks
from onnxq.torch_eval import TorchBlock
from onnxq.torch_ops import Unsupported

METHODS = ("adaround", "brecq", "qdrop")


@dataclasses.dataclass(frozen=True)
class RoundingConfig:
    """Reconstruction settings (AdaRound/BRECQ defaults, scaled to short CPU budgets).

    ``crop``: blocks whose input images are larger train on random ``crop`` x ``crop``
    windows of them (targets computed on the same window), which makes the high-resolution
    blocks of a CNN as cheap per step as the rest.
    """

    method: str = "brecq"
    iters: int = 100
    batch: int = 8
    lr: float = 5e-2
    reg_weight: float = 1e-3
    warmup: float = 0.2
    beta: tuple[float, float] = (20.0, 2.0)
    drop: float = 0.5
    learn_bias: bool = True
    crop: int | None = 56
    seed: int = 0
    device: str = "cpu"


@dataclasses.dataclass
class BlockReport:
    """What reconstruction did to one block."""

    block: str
    layers: int
    loss_nearest: float | None
    loss_learned: float | None
    seconds: float
    note: str = ""


def torch_device(device: str) -> str:
    """``device`` for torch, or 'cpu' (with a warning) when torch has no CUDA."""
    if device == "cuda" and not torch.cuda.is_available():
        warnings.warn("torch has no CUDA device: reconstruction runs on the CPU", stacklevel=2)
        return "cpu"
    return device


def stack_samples(data: Iterable[Feed]) -> dict[str, torch.Tensor]:
    """All calibration feeds concatenated along the batch dim (shapes must agree)."""
    parts: dict[str, list[np.ndarray]] = {}
    for feed in data:
        for name, array in feed.items():
            if parts.get(name) and parts[name][0].shape[1:] != array.shape[1:]:
                raise OnnxqError(f"learned rounding needs same-shaped samples; input '{name}' "
                                 f"has {parts[name][0].shape[1:]} and {array.shape[1:]}")
            parts.setdefault(name, []).append(array)
    if not parts:
        raise OnnxqError("calibration data is empty; pass --calib with at least one sample")
    return {name: torch.from_numpy(np.concatenate(arrays)) for name, arrays in parts.items()}


def _needed_after(blocks: list[Block], graph: ir.Graph) -> list[set[str]]:
    """For each block index, the tensors later blocks (or the graph outputs) still read."""
    needed: list[set[str]] = [set() for _ in blocks]
    later = {v.name for v in graph.outputs}
    for i in reversed(range(len(blocks))):
        needed[i] = set(later)
        later |= set(blocks[i].inputs)
    return needed


class Reconstructor:
    """Runs reconstruction over a model's blocks and collects the learned weights."""

    def __init__(self, model: ir.Model, plan: QuantPlan, activation_qparams: dict[str, QParams],
                 weight_qparams: dict[str, QParams], config: RoundingConfig,
                 progress: Progress | None = None,
                 reference: dict[str, np.ndarray] | None = None):
        self.model = model
        self.reference = reference
        self.plan = plan
        self.activation_qparams = activation_qparams
        self.weight_qparams = weight_qparams
        self.config = dataclasses.replace(config, device=torch_device(config.device))
        self.progress = progress or Progress(quiet=True)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.weights: dict[str, np.ndarray] = {}
        self.biases: dict[str, np.ndarray] = {}
        self.reports: list[BlockReport] = []

    def _batch(self, cache: dict[str, torch.Tensor], names: list[str], index: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        return {n: cache[n][index].to(self.config.device) for n in names}

    def _run_all(self, module: TorchBlock, cache: dict[str, torch.Tensor], names: list[str],
                 quantized: bool) -> dict[str, torch.Tensor]:
        """The block's outputs for every cached sample (no gradients, CPU results)."""
        total = next(iter(cache.values())).shape[0]
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        with torch.no_grad():
            for start in range(0, total, self.config.batch):
                index = torch.arange(start, min(start + self.config.batch, total))
                env = module(self._batch(cache, module.block.inputs, index), quantized)
                for n in names:
                    parts[n].append(env[n].cpu())
        return {n: torch.cat(p) for n, p in parts.items()}

    def _loss(self, module: TorchBlock, fp: dict, q: dict, outputs: list[str], index,
              drop: float, targets: dict[str, torch.Tensor] | None, crop: bool = True
              ) -> torch.Tensor:
        """Reconstruction error of ``outputs``; ``targets`` holds their FP32 values if known."""
        block = module.block
        fp_in = self._batch(fp, block.inputs, index)
        q_in = self._batch(q, block.inputs, index)
        if crop and self._croppable(fp_in):
            fp_in, q_in = self._crop(fp_in, q_in)
            targets = None
        if drop > 0:  # QDrop: each input element comes from the FP32 or the quantized network
            q_in = {n: torch.where(torch.rand_like(q_in[n]) < drop, fp_in[n], q_in[n])
                    if q_in[n].is_floating_point() else q_in[n] for n in q_in}
        stop = outputs[0] if len(outputs) == 1 else None
        if targets is None:
            with torch.no_grad():
                target = module(fp_in, quantized=False, stop=stop)
        else:
            target = self._batch(targets, outputs, index)
        got = module(q_in, quantized=True, drop=drop, stop=stop)
        floats = [n for n in outputs if got[n].is_floating_point()]
        return sum(((got[n] - target[n]) ** 2).sum(dim=1).mean() if got[n].dim() > 1
                   else ((got[n] - target[n]) ** 2).mean() for n in floats) / len(floats)

    def _croppable(self, inputs: dict[str, torch.Tensor]) -> bool:
        size = self.config.crop
        shapes = {tuple(t.shape[2:]) for t in inputs.values() if t.dim() == 4}
        return bool(size) and len(shapes) == 1 and all(t.dim() == 4 for t in inputs.values()) \
            and min(next(iter(shapes))) > size

    def _crop(self, fp_in: dict, q_in: dict) -> tuple[dict, dict]:
        """The same random window (offsets on a multiple of 4) of every input."""
        height, width = next(iter(fp_in.values())).shape[2:]
        size = self.config.crop
        top, left = (int(torch.randint(0, (extent - size) // 4 + 1, (1,),
                                       generator=self.generator)) * 4
                     for extent in (height, width))
        window = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
        return ({n: t[window] for n, t in fp_in.items()}, {n: t[window] for n, t in q_in.items()})

    def _optimize(self, module: TorchBlock, layers: list[ir.Node], outputs: list[str],
                  fp: dict, q: dict, targets: dict | None = None) -> tuple[float, float]:
        """Learn the rounding (and biases) of ``layers`` to reproduce ``outputs``."""
        cfg = self.config
        keys = [module.keys[n.inputs[1].name] for n in layers]
        rounding = [module.rounding[k] for k in keys]
        biases = [module.biases[module.keys[n.inputs[2].name]] for n in layers
                  if len(n.inputs) > 2 and n.inputs[2] is not None
                  and module.keys.get(n.inputs[2].name) in module.biases]
        groups = [{"params": [m.alpha for m in rounding], "lr": cfg.lr}]
        if biases:
            groups.append({"params": biases, "lr": cfg.lr * 0.1})
        optimizer = torch.optim.Adam(groups)
        total = next(iter(fp.values())).shape[0]
        drop = cfg.drop if cfg.method == "qdrop" else 0.0

        def evaluate() -> float:
            index = torch.arange(min(total, cfg.batch))
            for m in rounding:
                m.soft = False
            with torch.no_grad():
                value = float(self._loss(module, fp, q, outputs, index, 0.0, targets,
                                         crop=False))
            for m in rounding:
                m.soft = True
            return value

        before = evaluate()
        warm = int(cfg.warmup * cfg.iters)
        for step in range(cfg.iters):
            index = torch.randint(0, total, (min(cfg.batch, total),), generator=self.generator)
            loss = self._loss(module, fp, q, outputs, index, drop, targets)
            if step >= warm:
                progress = (step - warm) / max(cfg.iters - warm, 1)
                beta = cfg.beta[1] + (cfg.beta[0] - cfg.beta[1]) * (1 - progress)
                loss = loss + cfg.reg_weight * sum(m.regularizer(beta) for m in rounding)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for m in rounding:
            m.soft = False
        return before, evaluate()

    def run(self, data: Iterable[Feed]) -> list[BlockReport]:
        """Reconstruct every block in order; learned weights end up in ``self.weights``."""
        torch.manual_seed(self.config.seed)
        fp = stack_samples(data)
        q = dict(fp)
        blocks = cut_blocks(self.model.graph, self.plan,
                            min_layers=1 if self.config.method == "adaround" else 3)
        needed = _needed_after(blocks, self.model.graph)
        for i, block in enumerate(self.progress(blocks, f"reconstruct ({self.config.method})")):
            self._drop_dead(fp, q, needed[i - 1] | set(block.inputs) if i else None)
            start = time.perf_counter()
            try:
                module = TorchBlock(block, self.plan, self.activation_qparams,
                                    self.weight_qparams, self.config.learn_bias,
                                    self.config.device, self.reference)
            except Unsupported as exc:
                self._fall_back(block, str(exc), data, fp, q, start)
                continue
            before = after = None
            fp_out = self._run_all(module, fp, block.outputs, quantized=False)
            if block.layers:
                if self.config.method == "adaround":
                    for layer in block.layers:
                        before_i, after = self._optimize(module, [layer],
                                                         [layer.outputs[0].name], fp, q)
                        before = before_i if before is None else before
                else:
                    before, after = self._optimize(module, block.layers, block.outputs, fp, q,
                                                   fp_out)
            module.set_soft(False)
            q.update(self._run_all(module, q, block.outputs, quantized=True))
            fp.update(fp_out)
            weights, biases = module.learned()
            self.weights.update(weights)
            self.biases.update(biases)
            self.reports.append(BlockReport(block.name, len(block.layers), before, after,
                                            round(time.perf_counter() - start, 2)))
        return self.reports

    @staticmethod
    def _drop_dead(fp: dict, q: dict, keep: set[str] | None) -> None:
        if keep is None:
            return
        for name in [n for n in fp if n not in keep]:
            del fp[name], q[name]

    def _fall_back(self, block: Block, reason: str, data: Iterable[Feed], fp: dict, q: dict,
                   start: float) -> None:
        """Keep round-to-nearest in ``block``; take its outputs from the FP32 model in ORT."""
        outputs = collect_outputs(self.model, block.outputs, data, device=self.config.device,
                                  batch_size=self.config.batch, stage="fall-back block")
        for name, array in outputs.items():
            fp[name] = q[name] = torch.from_numpy(array)
        self.reports.append(BlockReport(
            block.name, len(block.layers), None, None, round(time.perf_counter() - start, 2),
            f"round-to-nearest: {reason}; the next block starts from FP32 inputs"))
