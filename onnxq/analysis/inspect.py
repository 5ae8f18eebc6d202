"""Summarize a model: op counts, what is quantized and what is not (with the reason), size."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from onnxq.analysis.matmulnbits import fusion_line, fusion_summary
from onnxq.plan.annotate import REGISTRY

INT4_IN_INT8 = "int4 (int8 container)"


class WeightWidth(NamedTuple):
    """The grid one compute node's weight is stored on."""

    width: str
    """The stored type, or INT4_IN_INT8."""
    grid_bits: int
    stored_bits: int
    elements: int


def weight_width(node: ir.Node) -> WeightWidth | None:
    """The grid of ``node``'s dequantized constant weight (its first such input that is not
    an int32 bias): the stored type, or INT4_IN_INT8 for symmetric int8 integers that all
    lie on the 4-bit grid (``--int4-storage int8``)."""
    for value in node.inputs[1:]:
        producer = None if value is None else value.producer()
        if producer is None or producer.op_type != "DequantizeLinear":
            continue
        stored = producer.inputs[0].const_value
        if stored is None or stored.dtype == ir.DataType.INT32:
            continue
        bits = stored.dtype.bitwidth
        zero = producer.inputs[2] if len(producer.inputs) > 2 else None
        symmetric = zero is None or (zero.const_value is not None
                                     and not np.any(zero.const_value.numpy()))
        q = stored.numpy()
        if stored.dtype == ir.DataType.INT8 and symmetric and q.size and (
                q.min() >= -8 and q.max() <= 7):
            return WeightWidth(INT4_IN_INT8, 4, bits, q.size)
        return WeightWidth(stored.dtype.name.lower(), bits, bits, q.size)
    return None


def summarize(model: ir.Model, path: Path) -> str:
    """A human-readable summary of ``model`` (read from ``path``)."""
    graph = model.graph
    nodes = list(ir.traversal.RecursiveGraphIterator(graph))  # If/Loop/Scan bodies included
    ops = Counter(node.op_type for node in nodes)
    by_dtype: Counter = Counter()
    for each in model.graphs():
        for value in each.initializers.values():
            if value.const_value is not None:
                by_dtype[value.const_value.dtype.name] += value.const_value.nbytes
    dq_fed = {node.name for node in nodes if node.op_type in REGISTRY
              and any(v is not None and v.producer() is not None
                      and v.producer().op_type == "DequantizeLinear" for v in node.inputs)}
    lines = [(f"{path}: {path.stat().st_size / 1e6:.2f} MB, opset "
              f"{model.opset_imports.get('', '?')}, {len(nodes)} nodes")]
    lines.append("ops: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    lines.append("weights: " + ", ".join(
        f"{dtype} {nbytes / 1e6:.2f} MB" for dtype, nbytes in by_dtype.most_common()))
    compute = [node for node in nodes if node.op_type in REGISTRY]
    lines.append(f"quantized compute nodes: {len(dq_fed)} of {len(compute)}")
    widths = {node.name: w for node in compute if (w := weight_width(node)) is not None}
    counts = Counter(w.width for w in widths.values())
    lines.append("weight widths: " + (", ".join(
        f"{width} {n}" for width, n in counts.most_common()) or "none quantized"))
    if widths:
        elements = sum(w.elements for w in widths.values())
        grid = sum(w.grid_bits * w.elements for w in widths.values()) / elements
        stored = sum(w.stored_bits * w.elements for w in widths.values()) / elements
        lines.append(f"  bits per weight element: {grid:.3f} on the grid, {stored:.3f} as "
                     "stored")
    if len(counts) > 1:
        lines.extend(f"  {name}: {w.width}" for name, w in widths.items())
    report = json.loads(model.metadata_props.get("onnxq.report", "{}"))
    allocation = report.get("allocation")
    if allocation:
        budget = allocation["budget"]
        lines.append(f"bit allocation ({allocation['importance']}, --{budget['kind']} "
                     f"{budget['value']:g}): {allocation['avg_weight_bits']:.3f} bits per "
                     f"weight, {allocation['size_mb']:.3f} MB")
    reasons = report.get("float_nodes") or {
        node.name: "no Q/DQ on its inputs" for node in compute if node.name not in dq_fed}
    if reasons:
        lines.append("not quantized:")
        lines.extend(f"  {name}: {why}" for name, why in sorted(reasons.items()))
    if report.get("widened_for_bias"):
        lines.append(f"weight scales widened so int32 biases fit: "
                     f"{', '.join(report['widened_for_bias'])}")
    if report.get("passes"):
        lines.append("passes: " + " -> ".join(report["passes"]))
    fusion = fusion_summary(model)
    if fusion:
        lines.append(fusion_line(fusion))
        lines.extend(f"  {name}: {why}" for name, why in fusion["not_fused"].items())
    overrides = report.get("overrides") or []
    if report.get("target"):
        applied = {o["rule"] for o in overrides}
        rules = {k: v for k, v in (report.get("target_rules") or {}).items() if k not in applied}
        lines.append(f"target: {report['target']}" + (": " + "; ".join(
            f"{rule} ({count})" for rule, count in rules.items()) if rules else ""))
    if overrides:
        lines.append("overrides:")
        lines.extend(f"  {o['rule']}: {o['sets']} ({o['nodes']} nodes)" for o in overrides)
    return "\n".join(lines)
