"""What bit allocation chooses between: weight groups that share one width, their candidate
types, and what each choice costs (grid bits, stored bytes)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from onnxq.errors import OnnxqError
from onnxq.numerics.affine import QTYPES
from onnxq.spec import QuantPlan

WIDTHS = ("int8", "int4")
"""The weight grids bit allocation chooses between (per channel), widest first."""
SCALE_BYTES = 4
"""A float32 scale per channel, stored beside the integers."""


@dataclasses.dataclass(frozen=True)
class WeightGroup:
    """Weights that take one width together: a user's ``--tie`` pattern, or one weight."""

    name: str
    weights: tuple[str, ...]
    elements: int
    channels: int
    """Scales the group stores (one per channel, or one per tensor)."""

    def bits(self, qtype: str) -> int:
        """Grid bits per element at ``qtype``."""
        return QTYPES[qtype].dtype.bitwidth

    def stored_bytes(self, qtype: str, storage: dict[str, str]) -> float:
        """Bytes the group takes as written: integers (in ``storage``'s container, when
        one is set for ``qtype``), a float32 scale and an integer zero point per channel."""
        bits = QTYPES[storage.get(qtype, qtype)].dtype.bitwidth
        return self.elements * bits / 8 + self.channels * (SCALE_BYTES + bits / 8)


def candidate_types(target_weights: tuple[str, ...]) -> tuple[str, ...]:
    """The widths the target runs, widest first."""
    return tuple(qtype for qtype in WIDTHS if qtype in target_weights)


def weight_groups(model: ir.Model, plan: QuantPlan, ties: tuple[str, ...] = (),
                  pinned: frozenset[str] = frozenset()) -> list[WeightGroup]:
    """The planned per-channel or per-tensor int8/int4 weights as groups, in plan order;
    every weight whose name matches one of ``ties`` (regular expressions) joins that
    pattern's group.  Blocked weights, other grids (QNN's uint8 constants) and the
    ``pinned`` weights (an override's type) keep theirs."""
    patterns = []
    for text in ties:
        try:
            patterns.append(re.compile(text))
        except re.error as exc:
            raise OnnxqError(f"--tie {text!r} is no regular expression ({exc}); write one "
                             "that matches the weight names to tie, e.g. 'attn.*(q|k|v)'"
                             ) from None
    members: dict[str, list[str]] = {}
    for name, spec in plan.weights.items():
        if spec.qtype not in WIDTHS or spec.block_size or name in pinned:
            continue
        key = next((p.pattern for p in patterns if p.search(name)), name)
        members.setdefault(key, []).append(name)
    for pattern in patterns:
        if pattern.pattern not in members:
            raise OnnxqError(f"--tie {pattern.pattern!r} matches no quantized weight; check "
                             "the names with onnxq inspect --plan-out")
    initializers = model.graph.initializers
    groups = []
    for key, names in members.items():
        shapes = [initializers[n].const_value.shape for n in names]
        axes = [plan.weights[n].axis for n in names]
        groups.append(WeightGroup(
            key, tuple(names), sum(int(np.prod(s.numpy())) for s in shapes),
            sum(1 if a is None else s[a] for s, a in zip(shapes, axes, strict=True))))
    return groups


def with_widths(plan: QuantPlan, groups: list[WeightGroup], widths: dict[str, str]
                ) -> QuantPlan:
    """``plan`` with each group's weights at its width in ``widths`` (group name -> type)."""
    weights = dict(plan.weights)
    for group in groups:
        for name in group.weights:
            weights[name] = dataclasses.replace(weights[name], qtype=widths[group.name])
    return dataclasses.replace(plan, weights=weights)
