"""The exact allocation: least total score under a budget, as a 0/1 integer program."""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxq.allocate.groups import WeightGroup
from onnxq.errors import OnnxqError

BUDGETS = {"avg-weight-bits": "bits per quantized weight element, on average",
           "size-mb": "MB (10^6 bytes) of quantized weights as stored, scales included"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """A limit on the weights: ``kind`` is a ``BUDGETS`` key."""

    kind: str
    value: float

    @property
    def flag(self) -> str:
        return f"--{self.kind}"

    def costs(self, groups: list[WeightGroup], types: tuple[str, ...],
              storage: dict[str, str]) -> np.ndarray:
        """Cost of each (group, type) in the budget's unit, so that a plan fits when the sum
        of its choices' costs is at most ``value``."""
        if self.kind == "avg-weight-bits":
            total = sum(group.elements for group in groups)
            return np.array([[group.elements * group.bits(t) / total for t in types]
                             for group in groups])
        return np.array([[group.stored_bytes(t, storage) / 1e6 for t in types]
                         for group in groups])


def _milp(scores: np.ndarray, costs: np.ndarray, limit: float) -> np.ndarray:
    """0/1 choices (one per row) of least ``scores`` sum with ``costs`` sum <= ``limit``."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    rows, cols = scores.shape
    one_each = np.zeros((rows, rows * cols))
    for row in range(rows):
        one_each[row, row * cols:(row + 1) * cols] = 1
    scale = max(float(np.abs(scores).max()), 1e-30)
    result = milp(scores.reshape(-1) / scale, integrality=np.ones(rows * cols),
                  bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(one_each, 1, 1),
                               LinearConstraint(costs.reshape(1, -1) / limit, -np.inf, 1)])
    if result.x is None:
        raise OnnxqError(f"the bit-allocation solver found no solution ({result.message})")
    return np.round(result.x).reshape(rows, cols).argmax(axis=1)


def solve(scores: np.ndarray, costs: np.ndarray, budget: Budget) -> np.ndarray:
    """The type index of each group (rows of ``scores``/``costs``) minimizing the total score
    with total cost within ``budget`` (exact; never over it, whatever the solver's
    tolerances); a budget below the cheapest plan is one error naming the smallest one."""
    cheapest = float(costs.min(axis=1).sum())
    if cheapest > budget.value * (1 + 1e-12):
        raise OnnxqError(f"{budget.flag} {budget.value:g} cannot be met: the smallest "
                         f"feasible budget is {cheapest:.4g} (every weight at its narrowest "
                         f"type); use {budget.flag} {cheapest:.4g} or more")
    limit = budget.value
    for _ in range(8):
        chosen = _milp(scores, costs, limit)
        spent = float(costs[np.arange(len(chosen)), chosen].sum())
        if spent <= budget.value:
            return chosen
        limit -= spent - budget.value  # the solver's tolerance let it over: tighten
    return costs.argmin(axis=1)


def sweep(costs: np.ndarray, count: int) -> list[float]:
    """``count`` budgets from the cheapest plan to the dearest, evenly spaced."""
    low, high = float(costs.min(axis=1).sum()), float(costs.max(axis=1).sum())
    return [float(x) for x in np.linspace(low, high, count)]
