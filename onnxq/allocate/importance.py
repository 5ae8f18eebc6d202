"""How much each weight group's candidate widths harm the output, from one pass over data.

``fisher``: the second-order increase of the output loss when the group alone is quantized,
``E[(g . dy)^2]`` with ``dy`` the group's layers' output change and ``g = J^T r`` the output
loss's random projection pulled back to those outputs (``refine.rounding.fisher``): an
unbiased estimate of ``dy^T J^T H J dy`` (H: the softmax-KL Hessian for logits, identity
otherwise), cross terms between elements included.  ``fisher-diag``: ``sum(g^2 dy^2)``,
the diagonal approximation (ModelOpt's auto_quantize score).  ``weight``: data-free, the
group's relative weight error ``|Q(W) - W|^2 / |W|^2``.  One forward and backward per
batch, plus one op per (layer, candidate): no evaluation of the network per candidate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.allocate.groups import WeightGroup, with_widths
from onnxq.calibrate.stream import batches
from onnxq.io.data import Feed, model_inputs
from onnxq.io.model_io import to_proto
from onnxq.numerics.affine import QTYPES, fake_quantize
from onnxq.plan.qparams import QParams, resolve_weights
from onnxq.spec import QuantPlan

IMPORTANCE = ("auto", "fisher", "fisher-diag", "weight")
"""Scores bit allocation can rank by; ``auto``: fisher with calibration data, weight without."""


def candidate_qparams(model: ir.Model, plan: QuantPlan, groups: list[WeightGroup],
                      types: tuple[str, ...]) -> dict[str, dict[str, QParams]]:
    """type -> weight -> the qparams the weight gets at that type (as the plan would give)."""
    names = [name for group in groups for name in group.weights]
    only = dataclasses.replace(plan, weights={n: plan.weights[n] for n in names})
    return {t: resolve_weights(model, with_widths(only, groups, dict.fromkeys(
        (g.name for g in groups), t))) for t in types}


def quantized_weights(model: ir.Model, qparams: dict[str, dict[str, QParams]]
                      ) -> dict[str, dict[str, np.ndarray]]:
    """type -> weight -> the weight rounded to nearest on that type's grid."""
    initializers = model.graph.initializers
    out: dict[str, dict[str, np.ndarray]] = {}
    for qtype, params in qparams.items():
        out[qtype] = {}
        for name, p in params.items():
            w = initializers[name].const_value.numpy()
            out[qtype][name] = fake_quantize(w, p.scale, p.zero_point, QTYPES[p.qtype], p.axis,
                                             p.block_size)
    return out


def weight_scores(model: ir.Model, groups: list[WeightGroup],
                  quantized: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """[group, type] relative weight error (data-free)."""
    initializers = model.graph.initializers
    scores = np.zeros((len(groups), len(quantized)))
    for row, group in enumerate(groups):
        ws = [initializers[n].const_value.numpy().astype(np.float64) for n in group.weights]
        energy = max(sum(float(np.sum(w ** 2)) for w in ws), 1e-30)
        for col, values in enumerate(quantized.values()):
            scores[row, col] = sum(float(np.sum((values[n] - w) ** 2))
                                   for n, w in zip(group.weights, ws, strict=True)) / energy
    return scores


@dataclasses.dataclass
class ScoreJob:
    """What every chunk of the data-aware scoring needs (picklable, for a Ray worker)."""

    model: bytes
    """The prepared FP32 model, serialized."""
    plan: str
    groups: list[tuple[str, ...]]
    quantized: dict[str, dict[str, np.ndarray]]
    batch_size: int
    device: str
    seed: int

    @classmethod
    def of(cls, model: ir.Model, plan: QuantPlan, groups: list[WeightGroup],
           quantized: dict[str, dict[str, np.ndarray]], batch_size: int, device: str,
           seed: int) -> ScoreJob:
        return cls(to_proto(model).SerializeToString(), plan.to_json(),
                   [g.weights for g in groups], quantized, batch_size, device, seed)


def score_chunk(job: ScoreJob, feeds: list[Feed], index: int) -> tuple[np.ndarray, int]:
    """Sums over ``feeds`` (chunk ``index``, which seeds its projections) of both fisher
    scores, [group, type, (fisher, fisher-diag)], and how many samples they cover."""
    import torch

    from onnxq.refine.rounding.blocks import Block
    from onnxq.refine.rounding.fisher import loss_projection
    from onnxq.refine.rounding.torch_block import TorchBlock
    from onnxq.refine.rounding.torch_ops import run_node

    model = ir.from_proto(onnx.load_from_string(job.model))
    plan = QuantPlan.from_json(job.plan).bind(model)
    graph = model.graph
    network = TorchBlock(Block(list(graph), [v.name for v in graph.inputs],
                               [v.name for v in graph.outputs], []), plan, {}, {},
                         learn_bias=False, device=job.device)
    readers: dict[str, list[tuple[ir.Node, int]]] = {}
    for node in graph:
        for position, value in enumerate(node.inputs):
            if value is not None and value.name in job.quantized[next(iter(job.quantized))]:
                readers.setdefault(value.name, []).append((node, position))
    for name in readers:
        network.constants[name].requires_grad_(True)  # so every reader's output is tracked
    nodes = list({id(node): node for uses in readers.values() for node, _ in uses}.values())
    rounded = {t: {n: torch.from_numpy(np.asarray(w, np.float32)).to(job.device)
                   for n, w in values.items()} for t, values in job.quantized.items()}
    generator = torch.Generator().manual_seed(job.seed * 100_003 + index)
    sums = np.zeros((len(job.groups), len(rounded), 2))
    samples = 0
    for batch in batches(feeds, model_inputs(model), job.batch_size):
        feed = {name: torch.from_numpy(np.asarray(array)).to(job.device)
                for name, array in batch.items()}
        rows = next(iter(batch.values())).shape[0] if batch else 1
        samples += rows
        env = network(feed, quantized=False)
        outputs = [env[v.name] for v in graph.outputs
                   if env[v.name].is_floating_point() and env[v.name].requires_grad]
        if not outputs:
            continue
        projected = sum((o * loss_projection(o, generator)).sum() for o in outputs)
        grads = torch.autograd.grad(projected, [env[n.outputs[0].name] for n in nodes],
                                    allow_unused=True)
        grad_of = {id(n): g for n, g in zip(nodes, grads, strict=True)}
        with torch.no_grad():
            for row, weights in enumerate(job.groups):
                for col, values in enumerate(rounded.values()):
                    dot = torch.zeros(rows, dtype=torch.float64)
                    diag = 0.0
                    for name in weights:
                        for node, position in readers.get(name, []):
                            grad = grad_of[id(node)]
                            if grad is None:
                                continue
                            operands = network.fp32_operands(node, env)
                            operands[position] = values[name]
                            change = run_node(node, operands)[0] - env[node.outputs[0].name]
                            product = (grad * change).double()
                            if grad.shape[:1] == (rows,):  # one dot product per sample
                                dot += product.reshape(rows, -1).sum(1)
                            else:
                                dot[0] += product.sum()
                            diag += float((product ** 2).sum())
                    sums[row, col] += (float((dot ** 2).sum()), diag)
    return sums, samples
