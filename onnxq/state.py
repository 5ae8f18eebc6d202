"""What the pipeline's stages share: the run's inputs (``RunContext``) and what the stages
decide and measure (``QuantState``), and the ``Stage`` record ``pipeline.STAGES`` lists."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from onnxq.config import QuantConfig
from onnxq.io.data import Feed
from onnxq.plan.qparams import QParams
from onnxq.progress import Progress
from onnxq.spec import QuantPlan

if TYPE_CHECKING:
    from onnxq.allocate.stage import Allocation


@dataclasses.dataclass(frozen=True)
class RunContext:
    """The run's inputs, which no stage changes: calibration data and how to stream it."""

    config: QuantConfig
    data: Iterable[Feed] | None
    progress: Progress
    total: int | None
    """How many calibration samples there are (for the progress bars), when known."""
    plan: QuantPlan | None = None
    """The user's plan (``--plan``), which replaces annotation."""
    pareto: bool = False
    """Measure the bit-allocation trade-off across budgets (``--pareto``)."""
    ray: str | None = None
    """The Ray cluster independent jobs run on (``--ray``); None: this process."""

    @property
    def stream(self) -> dict:
        """The keyword arguments of every calibration sweep."""
        return {"device": self.config.device, "batch_size": self.config.batch_size,
                "progress": self.progress, "total": self.total}


@dataclasses.dataclass
class QuantState:
    """The model and what the stages decide about it, in the order they fill it in."""

    model: ir.Model
    plan: QuantPlan = dataclasses.field(default_factory=QuantPlan)
    activations: dict[str, QParams] = dataclasses.field(default_factory=dict)
    """Activation qparams (8-bit or as configured), which emission writes."""
    wide: dict[str, QParams] = dataclasses.field(default_factory=dict)
    """16-bit activation qparams ``--min-sqnr`` may move a group to."""
    weights: dict[str, QParams] = dataclasses.field(default_factory=dict)
    reference: dict[str, np.ndarray] | None = None
    """FP32 weights and biases, kept for learned rounding."""
    guard_feeds: list[Feed] = dataclasses.field(default_factory=list)
    guard_outputs: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    """``--min-sqnr``'s held-out samples and the FP32 model's outputs on them."""
    samples: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    """Windows of activations on a few calibration samples (range refinement, the guard)."""
    widened: set[str] = dataclasses.field(default_factory=set)
    reconstruction: list[dict] = dataclasses.field(default_factory=list)
    promoted: list[dict] = dataclasses.field(default_factory=list)
    target_rules: Counter[str] = dataclasses.field(default_factory=Counter)
    """How often each rule of the target changed a decision (annotation, emission)."""
    guard_sqnr_db: list[float] = dataclasses.field(default_factory=list)
    allocation: Allocation | None = None
    """Bit allocation's scores and choice (under a weight budget)."""
    pareto: dict | None = None
    """The measured trade-off across budgets (``--pareto``)."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline: ``run`` reads and updates the state and returns the names
    of the passes it ran (for the report); it runs only ``when`` the state asks for it."""

    name: str
    run: Callable[[QuantState, RunContext], list[str]]
    when: Callable[[QuantState, RunContext], bool] = lambda state, ctx: True
