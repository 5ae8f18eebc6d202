"""Summarize a model: op counts, what is quantized and what is not (with the reason), size."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx_ir as ir

from onnxq.plan.annotate import REGISTRY


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
    report = json.loads(model.metadata_props.get("onnxq.report", "{}"))
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
    if report.get("target"):
        rules = report.get("target_rules") or {}
        lines.append(f"target: {report['target']}" + (": " + "; ".join(
            f"{rule} ({count})" for rule, count in rules.items()) if rules else ""))
    return "\n".join(lines)
