"""What to quantize, decided before anything is emitted (annotation is separate from emission)."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: grid, symmetry, channel axis and range observer."""

    qtype: str
    symmetric: bool
    axis: int | None = None
    observer: str = "minmax"


@dataclasses.dataclass(frozen=True)
class BiasSpec:
    """An int32 bias whose scale derives from its layer: scale = s_input * s_weight."""

    activation: str
    weight: str


@dataclasses.dataclass
class QuantPlan:
    """Per-tensor decisions for a whole graph.

    ``activations`` maps a tensor to its spec; tensors in one ``groups`` set share
    qparams (pass-through ops, Concat).  ``uses`` lists the (node, input index)
    pairs that read the quantized form of an activation.  ``float_nodes`` says why
    nodes were left in float.
    """

    activations: dict[str, QuantSpec] = dataclasses.field(default_factory=dict)
    weights: dict[str, QuantSpec] = dataclasses.field(default_factory=dict)
    biases: dict[str, BiasSpec] = dataclasses.field(default_factory=dict)
    uses: dict[str, list[tuple[ir.Node, int]]] = dataclasses.field(default_factory=dict)
    parent: dict[str, str] = dataclasses.field(default_factory=dict)
    float_nodes: dict[str, str] = dataclasses.field(default_factory=dict)

    def group(self, name: str) -> str:
        """The representative tensor of ``name``'s shared-qparams group."""
        root = name
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        self.parent[name] = root
        return root

    def share(self, a: str, b: str) -> None:
        """Make ``a`` and ``b`` share qparams."""
        ra, rb = self.group(a), self.group(b)
        if ra != rb:
            self.parent[rb] = ra

    def groups(self) -> dict[str, list[str]]:
        """Representative -> member tensors, for every quantized activation."""
        out: dict[str, list[str]] = {}
        for name in self.activations:
            out.setdefault(self.group(name), []).append(name)
        return out
