"""The allocate stage (each weight group's width under the budget) and the Pareto stage
(the trade-off measured across budgets, after calibration)."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np

from onnxq.allocate.groups import WeightGroup, candidate_types, weight_groups, with_widths
from onnxq.allocate.importance import (
    ScoreJob,
    candidate_qparams,
    quantized_weights,
    score_chunk,
    weight_scores,
)
from onnxq.allocate.jobs import run_jobs
from onnxq.allocate.pareto import MEASURED, PARETO_FORMAT, EvalJob, evaluate
from onnxq.allocate.solve import Budget, solve, sweep
from onnxq.config import QuantConfig
from onnxq.io.data import Limited
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan
from onnxq.state import QuantState, RunContext

CHUNK = 16
"""Calibration samples per scoring job."""
PARETO_SAMPLES = 32
"""Held-out calibration samples (after the scored ones) each Pareto point is measured on."""
PARETO_BUDGETS = 11
"""Budgets the Pareto front spans, evenly from the cheapest plan to the dearest."""


@dataclasses.dataclass
class Allocation:
    """What bit allocation scored and chose: [group, type] scores and costs, the choice."""

    budget: Budget
    importance: str
    types: tuple[str, ...]
    groups: list[WeightGroup]
    scores: np.ndarray
    costs: np.ndarray
    chosen: np.ndarray
    candidates: dict[str, dict[str, QParams]]
    seconds: float

    def widths(self, chosen: np.ndarray) -> tuple[str, ...]:
        """The type of each group under the choice ``chosen`` (type indices)."""
        return tuple(self.types[i] for i in chosen)

    def point(self, chosen: np.ndarray, storage: dict[str, str]) -> dict:
        """Average bits, stored size and predicted score of the choice ``chosen``."""
        pairs = list(zip(self.groups, self.widths(chosen), strict=True))
        elements = sum(g.elements for g in self.groups)
        bits = sum(g.elements * g.bits(t) for g, t in pairs)
        size = sum(g.stored_bytes(t, storage) for g, t in pairs)
        score = float(self.scores[np.arange(len(chosen)), chosen].sum())
        return {"avg_weight_bits": round(bits / elements, 4), "size_mb": round(size / 1e6, 4),
                "predicted": float(f"{score:.6g}"),
                **{f"{t}_groups": int(np.sum(chosen == i)) for i, t in enumerate(self.types)}}

    def report(self, storage: dict[str, str]) -> dict:
        """The run's allocation for the report: budget, score, what each weight got."""
        return {"budget": dataclasses.asdict(self.budget), "importance": self.importance,
                **self.point(self.chosen, storage),
                "layers": {name: t for g, t in zip(self.groups, self.widths(self.chosen),
                                                   strict=True) for name in g.weights},
                "score_seconds": round(self.seconds, 2)}


def _importance(ctx: RunContext) -> str:
    """The score to rank by: ``auto`` is fisher with data (torch), weight without."""
    wanted = ctx.config.importance
    if wanted == "auto":
        wanted = "fisher" if ctx.config.needs_data else "weight"
    if wanted == "weight":
        return wanted
    try:
        import torch  # noqa: F401
    except ImportError:
        warnings.warn(f"--importance {wanted} needs torch (pip install 'onnxq[rounding]'); "
                      "ranking by the data-free weight error instead", stacklevel=3)
        return "weight"
    return wanted


def importance_scores(state: QuantState, ctx: RunContext, importance: str,
                      groups: list[WeightGroup], quantized: dict[str, dict[str, np.ndarray]]
                      ) -> tuple[np.ndarray, str]:
    """[group, type] scores by ``importance`` (and the importance used: the weight error
    when the torch evaluator lacks one of the model's ops)."""
    if importance != "weight":
        from onnxq.refine.rounding.blocks import Block
        from onnxq.refine.rounding.torch_block import unsupported_ops

        graph = state.model.graph
        missing = unsupported_ops(Block(list(graph), [], [], []))
        if missing:
            warnings.warn(f"--importance {importance} runs the network in torch, which lacks "
                          f"{', '.join(missing)}; ranking by the data-free weight error "
                          "instead", stacklevel=3)
            importance = "weight"
    if importance == "weight":
        return weight_scores(state.model, groups, quantized), importance
    config = ctx.config
    feeds = list(Limited(ctx.data, config.score_samples))
    job = ScoreJob.of(state.model, state.plan, groups, quantized, config.batch_size,
                      config.device, config.seed)
    chunks = [(feeds[i:i + CHUNK], i // CHUNK) for i in range(0, len(feeds), CHUNK)]
    parts = run_jobs(score_chunk, job, ctx.progress(chunks, "importance"), ctx.ray)
    sums = sum(part for part, _ in parts)
    samples = max(sum(count for _, count in parts), 1)
    return sums[:, :, 0 if importance == "fisher" else 1] / samples, importance


def pinned_weights(plan: QuantPlan, config: QuantConfig) -> frozenset[str]:
    """The weights of the nodes an override gave a weight type: bit allocation keeps them."""
    setting = {rule.where for rule in config.overrides if rule.weights is not None}
    return frozenset(value.name for node, applied in plan.decisions.items()
                     if setting.intersection(applied)
                     for value in plan.nodes[node].inputs
                     if value is not None and value.name in plan.weights)


def allocate_stage(state: QuantState, ctx: RunContext) -> list[str]:
    """Score every weight group at every width the target runs, then give each the width
    that minimizes the total score within the budget (an exact integer program)."""
    config = ctx.config
    began = time.perf_counter()
    groups = weight_groups(state.model, state.plan, config.tie,
                           pinned_weights(state.plan, config))
    types = candidate_types(config.target.weights)
    candidates = candidate_qparams(state.model, state.plan, groups, types)
    quantized = quantized_weights(state.model, candidates)
    scores, importance = importance_scores(state, ctx, _importance(ctx), groups, quantized)
    costs = config.budget.costs(groups, types, config.weight_storage)
    chosen = solve(scores, costs, config.budget)
    state.allocation = Allocation(config.budget, importance, types, groups, scores, costs,
                                  chosen, candidates, time.perf_counter() - began)
    state.plan = with_widths(state.plan, groups, dict(zip(
        (g.name for g in groups), state.allocation.widths(chosen), strict=True)))
    return ["BitAllocation"]


def held_out(ctx: RunContext) -> list:
    """PARETO_SAMPLES calibration samples after the scored ones (the last ones read, when
    there are too few)."""
    start = ctx.config.score_samples
    feeds = list(Limited(ctx.data, start + PARETO_SAMPLES))
    return feeds[start:] or feeds[-PARETO_SAMPLES:]


def pareto_stage(state: QuantState, ctx: RunContext) -> list[str]:
    """Re-solve the scored allocation for PARETO_BUDGETS budgets and measure each plan (and
    uniform widest and narrowest) against FP32 on held-out calibration samples."""
    allocation, config = state.allocation, ctx.config
    storage = config.weight_storage
    budgets = sorted({*sweep(allocation.costs, PARETO_BUDGETS), allocation.budget.value})
    choices = [("onnxq", value, allocation.chosen if value == allocation.budget.value else
                solve(allocation.scores, allocation.costs, Budget(allocation.budget.kind, value)))
               for value in budgets]
    for index, qtype in enumerate(allocation.types):
        choices.append((f"uniform {qtype}", None, np.full(len(allocation.groups), index)))
    feeds = held_out(ctx)
    chosen_weights = {name for g in allocation.groups for name in g.weights}
    job = EvalJob.of(state.model, state.plan, allocation.groups, state.activations,
                     {k: v for k, v in state.weights.items() if k not in chosen_weights},
                     allocation.candidates, feeds, config.device)
    distinct = list(dict.fromkeys(allocation.widths(c) for _, _, c in choices))
    measured = dict(zip(distinct, run_jobs(evaluate, job, ctx.progress(
        [(w,) for w in distinct], "pareto"), ctx.ray), strict=True))
    points = []
    for kind, value, chosen in choices:
        point = {"kind": kind, "budget": None if value is None else round(value, 6),
                 **allocation.point(chosen, storage), **measured[allocation.widths(chosen)],
                 "chosen": kind == "onnxq" and value == allocation.budget.value}
        points.append(point)
    state.pareto = {"format": PARETO_FORMAT, "budget": dataclasses.asdict(allocation.budget),
                    "importance": allocation.importance, "samples": len(feeds),
                    "measured": MEASURED, "points": points}
    return ["ParetoFront"]
