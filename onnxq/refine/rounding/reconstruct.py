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
from typing import NamedTuple

import numpy as np
import onnx_ir as ir
import torch

from onnxq.calibrate.stream import stream_outputs
from onnxq.io.data import Feed
from onnxq.ops import LAYERS
from onnxq.plan.qparams import QParams
from onnxq.progress import Progress
from onnxq.refine.rounding.blocks import Block, cut_blocks
from onnxq.refine.rounding.fisher import output_sensitivity
from onnxq.refine.rounding.sample_store import SampleStore, Stored
from onnxq.refine.rounding.torch_block import TorchBlock
from onnxq.refine.rounding.torch_ops import Unsupported
from onnxq.spec import QuantPlan

METHODS = ("adaround", "brecq", "qdrop")


@dataclasses.dataclass(frozen=True)
class RoundingConfig:
    """Reconstruction settings (AdaRound/BRECQ, scaled to short CPU budgets).

    ``lr``: Adam's rate for the rounding variables.  A few hundred steps need a high one
    (at 5e-2 most roundings cannot cross over in 100 steps); but a layer fitted on fewer
    output rows (samples x pixels or tokens) than ``min_rows`` x its fan-in, such as a
    classifier on 256 samples, overfits at that rate and gets ``lr_few_rows`` instead.
    ``crop``: blocks whose input images are larger train on random ``crop`` x ``crop``
    windows of them (targets computed on the same window), which makes the high-resolution
    blocks of a CNN as cheap per step as the rest; blocks on smaller images take more
    samples per step (up to ``max_batch``) for as many pixels.  ``cache_mb``: RAM for the
    cached block inputs/outputs of all samples; what does not fit goes to temporary files.
    ``reg_weight``: strength of AdaRound's push of every soft rounding to 0 or 1; at 3e-2
    (not 1e-3) the roundings settle sooner and fit the calibration images less closely,
    which held-out images reward.  ``fisher``: weight each block output element's squared
    error by its diagonal Fisher (how much it moves the network's output; block methods).
    ``learn_steps``: LSQ-style learning of the activation steps a block alone reads, jointly
    with its rounding (``step_lr`` on the log of the step).
    """

    method: str = "brecq"
    iters: int = 100
    batch: int = 8
    lr: float = 0.2
    lr_few_rows: float = 5e-2
    min_rows: int = 64
    bias_lr: float = 5e-3
    reg_weight: float = 3e-2
    warmup: float = 0.2
    beta: tuple[float, float] = (20.0, 2.0)
    drop: float = 0.5
    learn_bias: bool = True
    learn_scale: bool = False
    scale_lr: float = 2e-3
    crop: int | None = 56
    max_batch: int = 32
    cache_mb: int | None = 2048
    fisher: bool = False
    learn_steps: bool = False
    step_lr: float = 5e-3
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


def _channels_last(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Images in NHWC memory order: depthwise and 1x1 convolutions (and their backward)
    run about twice as fast on CPU, and the order carries through the block's ops."""
    return {name: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
            for name, t in tensors.items()}


class Window(NamedTuple):
    """A square window of an image tensor: top-left corner and side."""

    top: int
    left: int
    size: int


def _cut(tensor: torch.Tensor, window: Window) -> torch.Tensor:
    return tensor[:, :, window.top:window.top + window.size,
                  window.left:window.left + window.size]


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
        self.store = SampleStore(None if config.cache_mb is None else config.cache_mb << 20)
        self.fisher: dict[str, Stored] = {}
        self.fisher_mean: dict[str, float] = {}

    def _batch(self, cache: dict[str, Stored], names: list[str], index: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        return {n: cache[n].take(index).to(self.config.device) for n in names}

    def _run_all(self, module: TorchBlock, cache: dict[str, Stored], names: list[str],
                 quantized: bool) -> dict[str, Stored]:
        """The block's outputs for every cached sample (no gradients)."""
        total = next(iter(cache.values())).shape[0]

        def batches():
            with torch.no_grad():
                for start in range(0, total, self.config.batch):
                    index = torch.arange(start, min(start + self.config.batch, total))
                    inputs = self._batch(cache, module.block.inputs, index)
                    env = module(_channels_last(inputs), quantized)
                    yield {n: env[n] for n in names}

        return self.store.collect(batches(), rows=total)

    def _loss(self, module: TorchBlock, fp: dict, q: dict, outputs: list[str], index,
              drop: float, targets: dict[str, Stored] | None, crop: bool = True
              ) -> torch.Tensor:
        """Reconstruction error of ``outputs``; ``targets`` holds their FP32 values if known."""
        block = module.block
        fp_in = self._batch(fp, block.inputs, index)
        q_in = self._batch(q, block.inputs, index)
        window: Window | None = None
        if crop and self._croppable(fp_in):
            window = self._window(next(iter(fp_in.values())).shape[2:])
            fp_in, q_in = ({n: _cut(t, window) for n, t in x.items()} for x in (fp_in, q_in))
            targets = None
        fp_in, q_in = _channels_last(fp_in), _channels_last(q_in)
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
        total = 0.0
        for name in floats:
            error = (got[name] - target[name]) ** 2
            if name in self.fisher:
                error = error * self._fisher(name, index, window, error.shape)
            total = total + (error.sum(dim=1).mean() if error.dim() > 1 else error.mean())
        return total / len(floats)

    def _fisher(self, name: str, index: torch.Tensor, window: Window | None,
                shape: torch.Size) -> torch.Tensor:
        """Normalized Fisher weights of ``name`` for ``index``, cut to the input window
        scaled to this output's resolution (``shape``)."""
        weights = self.fisher[name].take(index).to(self.config.device)
        if window is not None and weights.dim() == 4:
            top, left, size = window
            weights = _cut(weights, Window(top * shape[2] // size, left * shape[3] // size,
                                           shape[2]))
        return weights / self.fisher_mean[name]

    def _step_batch(self, block: Block, fp: dict[str, Stored], total: int) -> int:
        """Samples per step: ``batch`` at the crop size; blocks on smaller images take
        proportionally more (up to ``max_batch``), so their steps see as many pixels."""
        cfg = self.config
        images = [fp[n] for n in block.inputs if fp[n].dim() == 4]
        if not (cfg.crop and images):
            return min(cfg.batch, total)
        pixels = min(int(np.prod(t.shape[2:])) for t in images)
        return min(total, max(cfg.batch, min(cfg.max_batch, cfg.batch * cfg.crop ** 2 // pixels)))

    def _croppable(self, inputs: dict[str, torch.Tensor]) -> bool:
        size = self.config.crop
        shapes = {tuple(t.shape[2:]) for t in inputs.values() if t.dim() == 4}
        return bool(size) and len(shapes) == 1 and all(t.dim() == 4 for t in inputs.values()) \
            and min(next(iter(shapes))) > size

    def _window(self, extents: torch.Size) -> Window:
        """A random ``crop`` x ``crop`` window (corner on a multiple of 4)."""
        size = self.config.crop
        top, left = (int(torch.randint(0, (extent - size) // 4 + 1, (1,),
                                       generator=self.generator)) * 4 for extent in extents)
        return Window(top, left, size)

    def _output_rows(self, module: TorchBlock, layers: list[ir.Node], cache: dict
                     ) -> list[int]:
        """Output positions per sample of each layer (pixels of a conv, tokens of a MatMul):
        the rows of data its rounding is fitted on."""
        with torch.no_grad():
            env = module(_channels_last(self._batch(cache, module.block.inputs,
                                                    torch.arange(1))), quantized=False)
        rows = []
        for node in layers:
            out = env[node.outputs[0].name]
            channels = out.shape[LAYERS[node.op_type].output_channel_axis]
            rows.append(out.numel() // max(channels, 1))
        return rows

    def _optimize(self, module: TorchBlock, layers: list[ir.Node], outputs: list[str],
                  fp: dict, q: dict, targets: dict | None = None) -> tuple[float, float]:
        """Learn the rounding (and biases) of ``layers`` to reproduce ``outputs``."""
        cfg = self.config
        keys = [module.keys[n.inputs[1].name] for n in layers]
        rounding = [module.rounding[k] for k in keys]
        biases = [module.biases[module.keys[n.inputs[2].name]] for n in layers
                  if len(n.inputs) > 2 and n.inputs[2] is not None
                  and module.keys.get(n.inputs[2].name) in module.biases]
        total = next(iter(fp.values())).shape[0]
        rows = self._output_rows(module, layers, q)
        groups = [{"params": [m.alpha], "lr": cfg.lr if total * n >= cfg.min_rows * m.fan_in
                   else cfg.lr_few_rows} for m, n in zip(rounding, rows, strict=True)]
        if biases:
            groups.append({"params": biases, "lr": cfg.bias_lr})
        gains = [m.log_gain for m in rounding if m.log_gain is not None]
        if gains:
            groups.append({"params": gains, "lr": cfg.scale_lr})
        steps = [quant.log_gain for quant in module.steps.values()]
        if steps:
            groups.append({"params": steps, "lr": cfg.step_lr})
        optimizer = torch.optim.Adam(groups)
        drop = cfg.drop if cfg.method == "qdrop" else 0.0

        def evaluate() -> float:
            index = torch.arange(min(total, cfg.max_batch))
            for m in rounding:
                m.soft = False
            with torch.no_grad():
                value = float(self._loss(module, fp, q, outputs, index, 0.0, targets,
                                         crop=False))
            for m in rounding:
                m.soft = True
            return value

        before = evaluate()
        start = [p.detach().clone() for group in groups for p in group["params"]]
        warm = int(cfg.warmup * cfg.iters)
        batch = self._step_batch(module.block, fp, total)
        for step in range(cfg.iters):
            index = torch.randint(0, total, (batch,), generator=self.generator)
            loss = self._loss(module, fp, q, outputs, index, drop, targets)
            if step >= warm:
                progress = (step - warm) / max(cfg.iters - warm, 1)
                beta = cfg.beta[1] + (cfg.beta[0] - cfg.beta[1]) * (1 - progress)
                loss = loss + cfg.reg_weight * sum(m.regularizer(beta) for m in rounding)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = evaluate()
        if after > before:  # keep the start (nearest, corrected biases): it reproduces better
            with torch.no_grad():
                for param, value in zip((p for g in groups for p in g["params"]), start,
                                        strict=True):
                    param.copy_(value)
            after = before
        for m in rounding:
            m.soft = False
        return before, after

    def run(self, data: Iterable[Feed]) -> list[BlockReport]:
        """Reconstruct every block in order; learned weights end up in ``self.weights``."""
        torch.manual_seed(self.config.seed)
        try:
            return self._run(data)
        finally:
            self.store.close()

    def _run(self, data: Iterable[Feed]) -> list[BlockReport]:
        fp = self.store.collect({name: torch.from_numpy(array) for name, array in feed.items()}
                                for feed in data)
        q = dict(fp)
        blocks = cut_blocks(self.model.graph, self.plan,
                            min_layers=1 if self.config.method == "adaround" else 3)
        needed = _needed_after(blocks, self.model.graph)
        if self.config.fisher and self.config.method != "adaround":
            names = [n for b in blocks if b.layers for n in b.outputs]
            try:
                self.fisher, self.fisher_mean = output_sensitivity(
                    self.model, self.plan, fp, names, self.store, self.config.batch,
                    self.config.device, self.config.seed, self.reference, self.progress)
            except Unsupported as exc:
                warnings.warn(f"plain MSE reconstruction loss: the Fisher weights need the "
                              f"whole network in torch ({exc})", stacklevel=2)
        for i, block in enumerate(self.progress(blocks, f"reconstruct ({self.config.method})")):
            self._drop_dead(fp, q, needed[i - 1] | set(block.inputs) if i else None)
            for name in blocks[i - 1].outputs if i else ():
                self.fisher.pop(name, None)
            start = time.perf_counter()
            try:
                module = TorchBlock(block, self.plan, self.activation_qparams,
                                    self.weight_qparams, self.config.learn_bias,
                                    self.config.device, self.reference,
                                    self.config.learn_scale, self.config.learn_steps)
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
            self._keep(module)
            self.reports.append(BlockReport(block.name, len(block.layers), before, after,
                                            round(time.perf_counter() - start, 2)))
        return self.reports

    def _keep(self, module: TorchBlock) -> None:
        """Take ``module``'s learned weights, biases, weight scales and activation steps."""
        weights, biases, scales = module.learned()
        self.weights.update(weights)
        self.biases.update(biases)
        for name, scale in scales.items():
            old = self.weight_qparams[name]
            self.weight_qparams[name] = dataclasses.replace(
                old, scale=scale.astype(np.float32).reshape(old.scale.shape))
        for name, step in module.learned_steps().items():
            old = self.activation_qparams[name]
            self.activation_qparams[name] = dataclasses.replace(
                old, scale=np.full_like(old.scale, step, dtype=np.float32))

    @staticmethod
    def _drop_dead(fp: dict, q: dict, keep: set[str] | None) -> None:
        if keep is None:
            return
        for name in [n for n in fp if n not in keep]:
            del fp[name], q[name]

    def _fall_back(self, block: Block, reason: str, data: Iterable[Feed], fp: dict, q: dict,
                   start: float) -> None:
        """Keep round-to-nearest in ``block``; take its outputs from the FP32 model in ORT."""
        outputs = self.store.collect(
            {name: torch.from_numpy(array) for name, array in batch.items()}
            for batch in stream_outputs(self.model, block.outputs, data,
                                        device=self.config.device, batch_size=self.config.batch,
                                        stage="fall-back block"))
        for name, stored in outputs.items():
            fp[name] = q[name] = stored
        self.reports.append(BlockReport(
            block.name, len(block.layers), None, None, round(time.perf_counter() - start, 2),
            f"round-to-nearest: {reason}; the next block starts from FP32 inputs"))
