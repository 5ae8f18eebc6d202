"""What to quantize, decided before anything is emitted (annotation is separate from emission)."""

from __future__ import annotations

import dataclasses
import json

import onnx_ir as ir

from onnxq.errors import OnnxqError
from onnxq.numerics.affine import QTYPES, QType

PLAN_FORMAT = "onnxq.plan/1"


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: grid, symmetry, granularity and range observer.

    Granularity: per tensor (``axis`` None), per channel along ``axis``, or per block of
    ``block_size`` consecutive elements along ``axis`` (one scale per block and per index
    of every other axis: ONNX's blocked Q/DQ, opset 21).
    """

    qtype: str
    symmetric: bool
    axis: int | None = None
    observer: str = "minmax"
    block_size: int | None = None

    @property
    def grid(self) -> QType:
        """The integer grid ``qtype`` names."""
        return QTYPES[self.qtype]


@dataclasses.dataclass(frozen=True)
class BiasSpec:
    """An int32 bias whose scale derives from its layer: scale = s_input * s_weight."""

    activation: str
    weight: str


@dataclasses.dataclass
class QuantPlan:
    """Per-tensor decisions for a whole graph, keyed by tensor and node names (a value: it
    is written to and read from JSON, and holds for any copy of the prepared model).

    ``activations`` maps a tensor to its spec; tensors in one ``groups`` set share
    qparams (pass-through ops, Concat).  ``uses`` lists the (node name, input index)
    pairs that read the quantized form of an activation; ``outputs`` the graph outputs
    that are the quantized form of theirs (the DQ output keeps the name).  ``float_nodes`` says why
    nodes were left in float; ``decisions`` the target rules and overrides that changed a
    node's decisions.  ``nodes`` binds the node names to one model's nodes
    (``bind``); it is not part of the value.
    """

    activations: dict[str, QuantSpec] = dataclasses.field(default_factory=dict)
    weights: dict[str, QuantSpec] = dataclasses.field(default_factory=dict)
    biases: dict[str, BiasSpec] = dataclasses.field(default_factory=dict)
    uses: dict[str, list[tuple[str, int]]] = dataclasses.field(default_factory=dict)
    parent: dict[str, str] = dataclasses.field(default_factory=dict)
    outputs: list[str] = dataclasses.field(default_factory=list)
    float_nodes: dict[str, str] = dataclasses.field(default_factory=dict)
    decisions: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    nodes: dict[str, ir.Node] = dataclasses.field(default_factory=dict, compare=False,
                                                  repr=False)

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

    def bind(self, model: ir.Model) -> QuantPlan:
        """This plan read against ``model``'s nodes (the decisions are shared, not copied)."""
        nodes = {node.name: node for node in ir.traversal.RecursiveGraphIterator(model.graph)}
        return dataclasses.replace(self, nodes=nodes)

    def readers(self, name: str) -> list[tuple[ir.Node, int]]:
        """The (node, input index) pairs of the bound model that read ``name`` quantized."""
        return [(self.nodes[node], index) for node, index in self.uses.get(name, [])]

    def required_opset(self, wide_activations: bool = False) -> int:
        """The lowest default-domain opset whose Q/DQ holds every type the plan uses
        (``wide_activations``: and the 16-bit grids ``--min-sqnr`` may move to)."""
        specs = [*self.activations.values(), *self.weights.values()]
        blocked = any(spec.block_size for spec in specs)
        return max([13, *(spec.grid.min_opset for spec in specs), *([21] if blocked else []),
                    *([QTYPES["uint16"].min_opset] if wide_activations else [])])

    def to_json(self) -> str:
        """The plan as JSON, in the order emission walks it."""
        return json.dumps({
            "format": PLAN_FORMAT,
            "activations": {k: dataclasses.asdict(v) for k, v in self.activations.items()},
            "weights": {k: dataclasses.asdict(v) for k, v in self.weights.items()},
            "biases": {k: dataclasses.asdict(v) for k, v in self.biases.items()},
            "uses": {k: [list(use) for use in v] for k, v in self.uses.items()},
            "groups": self.parent,
            "outputs": self.outputs,
            "float_nodes": self.float_nodes,
            "decisions": self.decisions,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "the plan") -> QuantPlan:
        """A plan from ``to_json``'s text; a malformed one is an OnnxqError naming what."""
        try:
            data = json.loads(text)
            if data.get("format") != PLAN_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {PLAN_FORMAT!r}")
            plan = cls(
                activations={k: QuantSpec(**v) for k, v in data["activations"].items()},
                weights={k: QuantSpec(**v) for k, v in data["weights"].items()},
                biases={k: BiasSpec(**v) for k, v in data["biases"].items()},
                uses={k: [(str(node), int(index)) for node, index in v]
                      for k, v in data["uses"].items()},
                parent={str(k): str(v) for k, v in data["groups"].items()},
                outputs=[str(name) for name in data.get("outputs", [])],
                float_nodes={str(k): str(v) for k, v in data["float_nodes"].items()},
                decisions={str(k): [str(r) for r in v]
                           for k, v in data.get("decisions", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OnnxqError(f"{source} is not an onnxq plan ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:120]}): write one with "
                             "--plan-out") from None
        for spec in [*plan.activations.values(), *plan.weights.values()]:
            if spec.qtype not in QTYPES or spec.qtype == "int32":
                raise OnnxqError(f"{source} asks for type {spec.qtype!r}; use one of "
                                 f"{', '.join(k for k in QTYPES if k != 'int32')}")
            if spec.block_size is not None and (spec.block_size < 2 or spec.axis is None):
                raise OnnxqError(f"{source} asks for block_size {spec.block_size} "
                                 f"(axis {spec.axis}): a block needs an axis and >= 2 elements")
        return plan
