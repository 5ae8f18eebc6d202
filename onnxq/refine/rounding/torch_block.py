"""A block of the ONNX graph as a differentiable torch module, quantized as the QDQ model will be.

Weights of planned layers get learnable rounding (AdaRound's rectified sigmoid); planned
activations are fake-quantized at the uses that read them through Q/DQ (straight-through
gradient), optionally dropped at random (QDrop).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from onnxq.numerics.affine import QTYPES
from onnxq.numerics.affine_torch import fake_quantize, per_axis
from onnxq.plan.qparams import QParams
from onnxq.refine.rounding.blocks import Block
from onnxq.refine.rounding.torch_ops import OPS, Unsupported, run_node
from onnxq.spec import QuantPlan

ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid


def grid_neighbours(units: torch.Tensor, levels: tuple[float, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """For values in units of the scale, the grid value at or below each (the lowest for
    values under the grid, the next-to-top one above it) and the gap to the next one up."""
    grid = torch.tensor(sorted(set(levels)), dtype=units.dtype)
    index = (torch.searchsorted(grid, units.contiguous(), right=True) - 1).clamp(0, len(grid) - 2)
    return grid[index], grid[index + 1] - grid[index]


class LearnedRoundingWeight(nn.Module):
    """W_q = s * clamp(floor(W / s0) + h(V) * gap, qmin, qmax); V starts at round-to-nearest.

    On an integer grid ``floor`` is the integer below and ``gap`` 1; on a non-uniform grid
    (``fp4``) they are the grid value below and the distance to the one above, so the
    rounding chooses between the two neighbours as it does on integers.  With
    ``learn_scale`` the per-channel step ``s = s0 * exp(g)`` is learned too (``g`` starts at
    0); the values stay on the grid of ``s0``'s rounding, so ``s * q`` is still exactly what
    a DequantizeLinear with scale ``s`` gives.
    """

    def __init__(self, weight: np.ndarray, params: QParams, learn_scale: bool = False):
        super().__init__()
        grid = QTYPES[params.qtype]
        self.qmin, self.qmax = grid.qmin, grid.qmax
        self.register_buffer("base_scale", per_axis(params.scale, weight.shape, params.axis))
        w = torch.from_numpy(np.array(weight, np.float32))
        units = w / self.base_scale
        if grid.levels is None:
            floor, gap = torch.floor(units), torch.ones(())
        else:
            floor, gap = grid_neighbours(units, grid.levels)
        self.register_buffer("floor", floor)
        self.register_buffer("gap", gap)
        rest = ((units - self.floor) / self.gap).clamp(0.01, 0.99)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.log_gain = (nn.Parameter(torch.zeros_like(self.base_scale)) if learn_scale
                         else None)
        self.soft = True
        axis = params.axis if params.axis is not None and w.dim() > 1 else 0
        self.fan_in = w.numel() // w.shape[axis] if w.dim() else 1  # weights per output

    @property
    def scale(self) -> torch.Tensor:
        """The current step size (learned when ``learn_scale``)."""
        if self.log_gain is None:
            return self.base_scale
        return self.base_scale * torch.exp(self.log_gain)

    def h(self) -> torch.Tensor:
        """The soft rounding offset in [0, 1]."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def integers(self) -> torch.Tensor:
        """The hard-rounded weights in units of the scale (integers, or grid values)."""
        return torch.clamp(self.floor + (self.alpha >= 0).float() * self.gap, self.qmin,
                           self.qmax)

    def forward(self) -> torch.Tensor:
        offset = self.h() if self.soft else (self.alpha >= 0).float()
        return torch.clamp(self.floor + offset * self.gap, self.qmin, self.qmax) * self.scale

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's term pushing every h(V) to 0 or 1."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


class _FakeQuantize(torch.autograd.Function):
    """Q then DQ as ONNX defines them (``x / s``, round half to even, clamp), with a
    straight-through gradient inside the grid.  Written with in-place ops and hardtanh's
    backward kernel: several times faster on CPU than torch's fused fake-quant op."""

    @staticmethod
    def forward(ctx, x, scale: float, zero_point: int, qmin: int, qmax: int):
        ctx.save_for_backward(x)
        ctx.bounds = ((qmin - zero_point - 0.5) * scale, (qmax - zero_point + 0.5) * scale)
        return fake_quantize(x, scale, zero_point, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, x, *ctx.bounds), None, None, None, None


class _LearnedStepQuantize(torch.autograd.Function):
    """Q then DQ with a learned step ``scale`` (a 0-d tensor): LSQ's gradients, computed in
    one pass; ``x``'s is straight-through inside the grid, the step's is ``q - x / s`` there
    and the clipped level beyond."""

    @staticmethod
    def forward(ctx, x, scale: torch.Tensor, zero_point: int, qmin: int, qmax: int):
        ctx.save_for_backward(x, scale)
        ctx.grid = (zero_point, qmin, qmax)
        return fake_quantize(x, float(scale), zero_point, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        zero_point, qmin, qmax = ctx.grid
        level = x / scale + zero_point
        inside = (level >= qmin - 0.5) & (level <= qmax + 0.5)
        slope = torch.where(inside, torch.round(level) - level,
                            torch.where(level < qmin, float(qmin - zero_point),
                                        float(qmax - zero_point)))
        return grad * inside, (grad * slope).sum().reshape(scale.shape), None, None, None


class ActivationQuant(nn.Module):
    """Fake quantization of one activation (straight-through inside the range, zero
    gradient where clipped).  With ``learn_step`` its step ``s = s0 * exp(g)`` is learned
    (LSQ's gradient through the rounding, ``g`` starting at 0); the zero point stays."""

    def __init__(self, params: QParams, learn_step: bool = False):
        super().__init__()
        grid = QTYPES[params.qtype]
        self.qmin, self.qmax = grid.qmin, grid.qmax
        self.base_scale = float(params.scale.reshape(-1)[0])
        self.zero_point = int(params.zero_point.reshape(-1)[0])
        self.log_gain = nn.Parameter(torch.zeros(())) if learn_step else None

    @property
    def scale(self) -> torch.Tensor | float:
        """The current step (a tensor when learned)."""
        if self.log_gain is None:
            return self.base_scale
        return self.base_scale * torch.exp(self.log_gain)

    def forward(self, x: torch.Tensor, drop: float = 0.0) -> torch.Tensor:
        if self.log_gain is None:
            q = _FakeQuantize.apply(x, self.base_scale, self.zero_point, self.qmin, self.qmax)
        else:
            q = _LearnedStepQuantize.apply(x, self.scale, self.zero_point, self.qmin, self.qmax)
        if drop > 0:
            return torch.where(torch.rand_like(x) < drop, x, q)
        return q


def unsupported_ops(block: Block) -> list[str]:
    """Op types of ``block`` that the torch evaluator cannot run."""
    return sorted({n.op_type for n in block.nodes
                   if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})


class TorchBlock(nn.Module):
    """Evaluate ``block`` in FP32 or quantized, with learnable weight rounding and biases."""

    def __init__(self, block: Block, plan: QuantPlan, activation_qparams: dict[str, QParams],
                 weight_qparams: dict[str, QParams], learn_bias: bool = True,
                 device: str = "cpu", reference: dict[str, np.ndarray] | None = None,
                 learn_scale: bool = False, learn_steps: bool = False):
        """``reference`` holds FP32 values of weights/biases that earlier passes changed
        (bias correction, pre-calibration): the FP32 run and the rounding start use them.
        ``learn_scale`` makes the per-channel weight steps learnable as well;
        ``learn_steps`` the steps of the activations only this block reads (and that share
        their grid with no other tensor)."""
        super().__init__()
        missing = unsupported_ops(block)
        if missing:
            raise Unsupported(f"no torch implementation of {', '.join(missing)}")
        self.block = block
        self.rounding = nn.ModuleDict()
        self.biases = nn.ParameterDict()
        self.keys: dict[str, str] = {}
        self.constants: dict[str, torch.Tensor] = {}
        self.fp32: dict[str, torch.Tensor] = {}
        reference = reference or {}
        for node in block.nodes:
            for value in node.inputs:
                if value is not None and value.const_value is not None:
                    self.constants[value.name] = torch.from_numpy(
                        np.array(value.const_value.numpy(), copy=True)).to(device)
                    if value.name in reference:
                        self.fp32[value.name] = torch.from_numpy(
                            np.array(reference[value.name], np.float32)).to(device)
        biases = {b.weight: name for name, b in plan.biases.items()}
        self.steps = nn.ModuleDict()  # key -> a learned activation step
        self.step_names: dict[str, str] = {}  # key -> the activation it quantizes
        self.quant: dict[tuple[int, int], ActivationQuant] = {}
        by_name: dict[str, ActivationQuant] = {}
        members = {id(node) for node in block.nodes}
        groups = plan.groups()
        for name in plan.uses:
            if name not in activation_qparams:
                continue
            readers = plan.readers(name)
            learn = learn_steps and len(groups.get(plan.group(name), [name])) == 1 \
                and all(id(node) in members for node, _ in readers)
            by_name[name] = quant = ActivationQuant(activation_qparams[name], learn)
            if learn:
                key = f"a{len(self.steps)}"
                self.steps[key], self.step_names[key] = quant, name
            for node, index in readers:
                self.quant[(id(node), index)] = quant
        self.bias_scales: dict[str, tuple[ActivationQuant, str]] = {}  # bias -> (input, weight)
        for name, bias in plan.biases.items():
            if name in self.constants and bias.activation in by_name:
                self.bias_scales[name] = (by_name[bias.activation], bias.weight)
        self.weight_scales = {weight: per_axis(weight_qparams[weight].scale, (-1,), 0).to(device)
                              for _, weight in self.bias_scales.values()}
        for node in block.layers:
            weight = node.inputs[1]
            key = f"w{len(self.keys)}"
            self.keys[weight.name] = key
            start = reference.get(weight.name, weight.const_value.numpy())
            self.rounding[key] = LearnedRoundingWeight(start, weight_qparams[weight.name],
                                                       learn_scale)
            bias_name = biases.get(weight.name)
            if learn_bias and bias_name in self.constants:
                self.keys[bias_name] = f"b{len(self.keys)}"
                self.biases[self.keys[bias_name]] = nn.Parameter(
                    self.constants[bias_name].clone().float())
        self.to(device)

    def set_soft(self, soft: bool) -> None:
        """Soft (training) or hard (final) rounding for every weight."""
        for module in self.rounding.values():
            module.soft = soft

    def _operand(self, value: ir.Value, env: dict, quantized: bool) -> torch.Tensor:
        key = self.keys.get(value.name)
        if quantized and key in self.rounding:
            return self.rounding[key]()
        if value.name in env:
            return env[value.name]
        if not quantized:
            return self.fp32.get(value.name, self.constants[value.name])
        bias = self.biases[key] if key in self.biases else self.constants[value.name]
        if value.name in self.bias_scales:  # int32 bias, scale s_input * s_weight, as emitted
            scale = self._bias_scale(value.name, bias.numel())
            bias = bias + (torch.round(bias / scale) * scale - bias).detach()
        return bias

    def _bias_scale(self, name: str, size: int) -> torch.Tensor:
        reader, weight = self.bias_scales[name]
        input_scale = reader.scale
        key = self.keys.get(weight)
        weight_scale = (self.rounding[key].scale if key in self.rounding
                        else self.weight_scales[weight]).reshape(-1)
        if weight_scale.numel() != size:  # grouped ConvTranspose: weight scales repeat per group
            weight_scale = weight_scale.repeat(size // weight_scale.numel())
        return (weight_scale.detach().double() * input_scale).float()  # as emission rounds it

    def fp32_operands(self, node: ir.Node, env: dict) -> list[torch.Tensor | None]:
        """``node``'s inputs in the FP32 run (``env``: the tensors computed so far)."""
        return [None if value is None else self._operand(value, env, False)
                for value in node.inputs]

    def forward(self, inputs: dict[str, torch.Tensor], quantized: bool, drop: float = 0.0,
                stop: str | None = None) -> dict[str, torch.Tensor]:
        """Run the block; returns every tensor computed (stops early once ``stop`` exists)."""
        env = dict(inputs)
        for node in self.block.nodes:
            operands = []
            for index, value in enumerate(node.inputs):
                if value is None:
                    operands.append(None)
                    continue
                x = self._operand(value, env, quantized)
                quant = self.quant.get((id(node), index)) if quantized else None
                operands.append(quant(x, drop) if quant is not None else x)
            for value, result in zip(node.outputs, run_node(node, operands), strict=False):
                env[value.name] = result
            if stop is not None and stop in env:
                break
        return env

    def learned(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                               dict[str, np.ndarray]]:
        """Hard-rounded weights (dequantized, exactly on the grid), learned biases, and the
        learned per-channel weight scales (flat, float32; only with ``learn_scale``)."""
        weights, biases, scales = {}, {}, {}
        for name, key in self.keys.items():
            if key in self.rounding:
                module = self.rounding[key]
                scale = module.scale.detach().cpu()
                weights[name] = (module.integers().cpu() * scale).numpy()
                if module.log_gain is not None:
                    scales[name] = scale.reshape(-1).numpy()
            else:
                biases[name] = self.biases[key].detach().cpu().numpy()
        return weights, biases, scales

    def learned_steps(self) -> dict[str, float]:
        """The learned activation steps (``learn_steps``), by activation name."""
        return {self.step_names[key]: float(quant.scale.detach())
                for key, quant in self.steps.items()}
