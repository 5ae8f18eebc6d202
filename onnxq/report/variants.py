"""Copies of the FP32 reference in which one node reads its inputs as the QDQ model
quantized them ("only this layer quantized"), or as a suggested fix would."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxq.graph import FreshNames, values_by_name
from onnxq.numerics.affine import QTYPES, WIDE, fake_quantize
from onnxq.ops import LAYERS
from onnxq.plan.qparams import weight_qparams
from onnxq.report.pairing import QDQ, Quantizer, Row, float_names


@dataclasses.dataclass(frozen=True)
class Fix:
    """A change to one row's quantization, measured before it is suggested: its
    activations on the 16-bit grid of the same range, or its weights int8 per channel."""

    kind: str
    """``activations`` or ``weights``."""
    qtype: str


def wide_grid(quantizer: Quantizer) -> tuple[np.ndarray, np.ndarray, str]:
    """The 16-bit scale and zero point covering the range of an 8- or 4-bit activation
    quantizer, and the 16-bit type."""
    grid = QTYPES[quantizer.qtype]
    wide = QTYPES[WIDE[quantizer.qtype]]
    scale = quantizer.scale.astype(np.float64).reshape(())
    zp = quantizer.zero_point.reshape(())
    lo, hi = (grid.qmin - zp) * scale, (grid.qmax - zp) * scale
    step = (hi - lo) / (wide.qmax - wide.qmin)
    zero = 0 if wide.signed else int(np.clip(np.round(-lo / step), wide.qmin, wide.qmax))
    return np.float32(step), np.int64(zero), wide.name


class Variants:
    """Builds the one-node variants of ``reference`` for rows of ``quantized``."""

    def __init__(self, quantized: ir.Model, reference: ir.Model):
        self.quantized = quantized
        self.reference = reference
        self.renamed = float_names(quantized)

    def only(self, row: Row, fix: Fix | None = None) -> ir.Model:
        """The reference with ``row``'s node reading its quantized inputs (and the
        quantized model's own constants: a corrected bias), under ``fix`` when given."""
        model = self.reference.clone()
        graph = model.graph
        values = values_by_name(graph)
        fresh = FreshNames(model)
        node = next(n for n in graph if n.name == row.node.name)
        for index, value in enumerate(row.node.inputs):
            if value is None:
                continue
            quantizer = row.inputs.get(index)
            if fix is not None and quantizer is not None:
                if fix.kind == "activations" and quantizer.kind == "activation":
                    node.replace_input_with(index, self._wide(
                        values[quantizer.tensor], quantizer, graph, node, fresh))
                    continue
                if fix.kind == "weights" and quantizer.kind in ("weight", "bias"):
                    if quantizer.kind == "weight":
                        node.replace_input_with(index, self._int8_weight(
                            node, index, graph, fresh))
                    continue  # the bias: the reference's float one
            if quantizer is not None or (value.const_value is not None
                                         and value.producer() is None):
                node.replace_input_with(index, self._transplant(value, graph, values, fresh,
                                                                node))
        return model

    def all_but(self, row: Row) -> ir.Model:
        """The quantized model with ``row``'s node reading float inputs: the activations
        before their Q/DQ, the reference's weights and biases, rows gathered from the
        reference's table."""
        model = self.quantized.clone()
        graph = model.graph
        values = values_by_name(graph)
        fresh = FreshNames(model)
        node = next(n for n in graph if n.name == row.node.name)
        twin = next(n for n in self.reference.graph if n.name == row.node.name)
        for index, quantizer in row.inputs.items():
            source = quantizer.dq.inputs[0].producer()
            if quantizer.kind == "activation":
                node.replace_input_with(index, values[source.inputs[0].name])
            elif quantizer.kind == "lookup":
                table = next(n for n in self.reference.graph if n.name == source.name)
                gather = ir.Node("", "Gather", [self._copy(table.inputs[0], graph, fresh),
                                                values[source.inputs[1].name]],
                                 attributes=list(source.attributes.values()),
                                 name=fresh(f"{source.name}_float"))
                gather.outputs[0].name = fresh(f"{source.outputs[0].name}_float")
                graph.insert_before(node, gather)
                node.replace_input_with(index, gather.outputs[0])
            else:
                node.replace_input_with(index, self._copy(twin.inputs[index], graph, fresh))
        return model

    @staticmethod
    def _copy(value: ir.Value, graph: ir.Graph, fresh: FreshNames) -> ir.Value:
        """An initializer of another model copied into ``graph`` under a fresh name."""
        copy = ir.Value(name=fresh(value.name), type=value.type, shape=value.shape,
                        const_value=value.const_value)
        graph.register_initializer(copy)
        return copy

    def _transplant(self, value: ir.Value, graph: ir.Graph, values: dict[str, ir.Value],
                    fresh: FreshNames, before: ir.Node) -> ir.Value:
        """``value`` of the quantized graph rebuilt in ``graph``: float tensors the reference
        computes are its own; Q/DQ nodes, integer lookups and constants are copied."""
        producer = value.producer()
        if producer is None and value.const_value is not None:
            return self._copy(value, graph, fresh)
        name = self.renamed.get(value.name, value.name)
        if producer is None or (producer.op_type not in QDQ and name in values
                                and values[name].dtype == value.dtype):
            return values[name]
        inputs = [None if v is None else self._transplant(v, graph, values, fresh, before)
                  for v in producer.inputs]
        copy = ir.Node(producer.domain, producer.op_type, inputs,
                       attributes=list(producer.attributes.values()),
                       num_outputs=len(producer.outputs), name=fresh(producer.name))
        for new, old in zip(copy.outputs, producer.outputs, strict=True):
            new.name, new.type, new.shape = fresh(old.name), old.type, old.shape
        graph.insert_before(before, copy)
        return copy.outputs[value.index()]

    @staticmethod
    def _constant(graph: ir.Graph, fresh: FreshNames, name: str, array: np.ndarray
                  ) -> ir.Value:
        value = ir.Value(name=fresh(name), const_value=ir.tensor(array, name=fresh(name)))
        value.const_value.name = value.name
        graph.register_initializer(value)
        return value

    def _wide(self, x: ir.Value, quantizer: Quantizer, graph: ir.Graph, before: ir.Node,
              fresh: FreshNames) -> ir.Value:
        """``x`` fake-quantized in float ops on the 16-bit grid of the quantizer's range
        (exact at any opset: Div, Round, Add, Clip, Sub, Mul)."""
        scale, zero, qtype = wide_grid(quantizer)
        grid = QTYPES[qtype]
        f32 = np.float32
        consts = [self._constant(graph, fresh, f"{x.name}_wide_{what}", f32(v))
                  for what, v in (("scale", scale), ("zero", zero), ("min", grid.qmin),
                                  ("max", grid.qmax))]
        s, z, lo, hi = consts
        steps = [("Div", [x, s]), ("Round", [None]), ("Add", [None, z]),
                 ("Clip", [None, lo, hi]), ("Sub", [None, z]), ("Mul", [None, s])]
        current = x
        for op, inputs in steps:
            node = ir.node(op, [current if v is None else v for v in inputs],
                           name=fresh(f"{x.name}_wide_{op}"))
            node.outputs[0].name = fresh(f"{x.name}_wide_{op.lower()}")
            graph.insert_before(before, node)
            current = node.outputs[0]
        return current

    def _int8_weight(self, node: ir.Node, index: int, graph: ir.Graph, fresh: FreshNames
                     ) -> ir.Value:
        """The reference's weight at ``index`` fake-quantized int8 per channel (min-max)."""
        w = node.inputs[index].const_value.numpy()
        kind = LAYERS.get(node.op_type)
        axis = kind.weight_axis(node, w.ndim) if kind is not None else None
        params = weight_qparams(w, "int8", axis, "minmax")
        return self._constant(graph, fresh, f"{node.inputs[index].name}_int8", fake_quantize(
            w, params.scale, params.zero_point, QTYPES["int8"], axis))


def candidate_fixes(row: Row, activation_types: tuple[str, ...]) -> list[Fix]:
    """The fixes worth measuring for ``row``: 16-bit activations where its inputs are
    narrower and the target runs 16 bits, int8 per-channel weights where its weights are
    4-bit or per tensor."""
    fixes = []
    acts = [q for q in row.inputs.values() if q.kind == "activation"]
    wide = {WIDE.get(q.qtype) for q in acts} - {None}
    if acts and len(wide) == 1 and wide <= set(activation_types):
        fixes.append(Fix("activations", wide.pop()))
    weights = [q for q in row.inputs.values() if q.kind == "weight"]
    if weights and row.node.op_type in LAYERS and any(
            q.qtype != "int8" or q.granularity == "per-tensor" for q in weights):
        fixes.append(Fix("weights", "int8"))
    return fixes
