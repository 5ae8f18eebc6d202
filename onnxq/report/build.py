"""``onnxq report``: per-layer errors of a QDQ model against its FP32 source, the culprit
layers with fixes measured for them, as one JSON-ready value."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnxq.emit.qdq import SHAPE_READERS
from onnxq.errors import OnnxqError
from onnxq.graph import values_by_name
from onnxq.io.data import Feed
from onnxq.io.tempfiles import TempDir
from onnxq.plan.overrides import OverrideRule
from onnxq.progress import Progress
from onnxq.report.measure import Energy, PairedStats, Spill, db, output_energy, paired_pass
from onnxq.report.pairing import (
    Quantizer,
    Row,
    float_names,
    prepared_reference,
    quantized_rows,
    stored_config,
    stored_report,
)
from onnxq.report.variants import Fix, Variants, candidate_fixes

REPORT_FORMAT = "onnxq.report/1"
OVERRIDES_FILE = "overrides.toml"
MIN_GAIN_DB = 6.0
"""A measured fix is suggested over ``skip`` when it gains at least this much."""
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


def literal_glob(name: str) -> str:
    """A glob that matches exactly ``name`` (its wildcard characters bracketed)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _weight_sqnr(quantizer: Quantizer, row: Row, index: int, nodes: dict[str, ir.Node]
                 ) -> float | None:
    """The dequantized weight (a lookup's table) against the reference's (``nodes``: its
    nodes by name)."""
    if quantizer.kind == "lookup":
        gather = quantizer.dq.inputs[0].producer()
        float_value = nodes[gather.name].inputs[0] if gather.name in nodes else None
    else:
        node = nodes.get(row.node.name)
        float_value = node.inputs[index] if node is not None else None
    if float_value is None or float_value.const_value is None:
        return None
    w = float_value.const_value.numpy().astype(np.float64)
    approx = quantizer.dequantized()
    if approx.shape != w.shape:
        return None
    energy = Energy()
    energy.add(w, approx)
    return db(energy.sqnr_db)


def _decision(row: Row, rules: list[str]) -> dict:
    weights = [q for q in row.inputs.values() if q.kind in ("weight", "lookup")]
    acts = [q for q in row.inputs.values() if q.kind == "activation"]
    return {"weights": ", ".join(f"{q.qtype} {q.granularity}" for q in weights) or None,
            "activations": ", ".join(dict.fromkeys(q.qtype for q in acts)) or None,
            "rules": rules}


def _skipped(row: Row) -> list[str]:
    """The nodes to keep float so that ``row`` reads float inputs: itself, and for rows
    picked from a quantized table, the lookups (Gather) that pick them."""
    lookups = [q.dq.inputs[0].producer().name for q in row.inputs.values()
               if q.kind == "lookup"]
    own = [row.node.name] if any(q.kind != "lookup" for q in row.inputs.values()) else []
    return list(dict.fromkeys([*own, *lookups]))


def _suggestion(row: Row, sqnr: float, fixes: list[tuple[Fix, float]]
                ) -> tuple[list[OverrideRule], float | None]:
    """The overrides that fix ``row`` and its measured only-this-layer SQNR: the best
    measured fix, or skip (exact: None) when none gains ``MIN_GAIN_DB``."""
    best = max(fixes, key=lambda pair: pair[1], default=None)
    node = literal_glob(row.node.name)
    if best is None or best[1] - sqnr < MIN_GAIN_DB:
        return [OverrideRule(OVERRIDES_FILE, 0, node=literal_glob(name), skip=True)
                for name in _skipped(row)], None
    fix, fixed = best
    if fix.kind == "activations":
        return [OverrideRule(OVERRIDES_FILE, 0, node=node, activations=fix.qtype)], fixed
    return [OverrideRule(OVERRIDES_FILE, 0, node=node, weights="int8",
                         granularity="per-channel")], fixed


def overrides_text(culprits: list[dict], quantized_name: str) -> str:
    """The culprits' suggested overrides as an ``--overrides`` file."""
    lines = [f"# onnxq report: overrides for the worst layers of {quantized_name}, worst first.",
             "# Apply with: onnxq quantize FP32 ... --overrides overrides.toml", ""]
    for culprit in culprits:
        fixed = culprit["suggestion_sqnr_db"]
        lines += [f"# {culprit['node']} ({culprit['op']}): only-this-layer output SQNR "
                  f"{culprit['only_layer_sqnr_db']} dB"
                  + ("" if fixed is None else f", {fixed} dB with this rule"),
                  culprit["override"], ""]
    return "\n".join(lines)


def _checked(quantized: ir.Model, reference: ir.Model, names: tuple[str, str]
             ) -> tuple[list[Row], list[str]]:
    """The report's rows and the float graph outputs compared, or one error line."""
    rows = [row for row in quantized_rows(quantized) if row.node.op_type not in SHAPE_READERS]
    if not rows:
        raise OnnxqError(f"{names[1]} has no DequantizeLinear read by a node: it is not a "
                         "QDQ model (quantize it with onnxq quantize first)")
    outputs = [v.name for v in reference.graph.outputs if v.dtype in FLOAT_TYPES]
    if not outputs or not set(outputs) <= {v.name for v in quantized.graph.outputs}:
        raise OnnxqError(f"{names[1]}'s outputs are not {names[0]}'s: pass the FP32 model it "
                         "was quantized from")
    return rows, outputs


def _row_outputs(quantized: ir.Model, reference: ir.Model, rows: list[Row]
                 ) -> dict[str, tuple[str, str]]:
    """Row node -> its float output's name in the quantized model and in the reference."""
    renamed, values = float_names(quantized), values_by_name(reference.graph)
    found = {}
    for row in rows:
        out = row.node.outputs[0]
        twin = values.get(renamed.get(out.name, out.name))
        if twin is not None and out.dtype in FLOAT_TYPES:
            found[row.node.name] = (out.name, twin.name)
    return found


def _culprit(row: Row, sqnr: float, fixes: list[tuple[Fix, float]]) -> dict:
    rules, fixed = _suggestion(row, sqnr, fixes)
    return {"node": row.node.name, "op": row.node.op_type, "only_layer_sqnr_db": db(sqnr),
            "fixes": [{"sets": f"{fix.kind} {fix.qtype}", "only_layer_sqnr_db": db(value)}
                      for fix, value in fixes],
            "suggestion": "; ".join(rule.describe() for rule in rules),
            "suggestion_sqnr_db": None if fixed is None else db(fixed),
            "override": "\n\n".join(rule.to_toml() for rule in rules)}


def _row_entry(row: Row, stats: PairedStats, only: float, without: float | None,
               rules: list[str], nodes: dict[str, ir.Node]) -> dict:
    inputs = []
    for index, q in sorted(row.inputs.items()):
        entry = {"index": index, "tensor": q.tensor, "kind": q.kind, "qtype": q.qtype,
                 "granularity": q.granularity}
        if q.kind == "activation":
            entry |= {"scale": float(q.scale.reshape(-1)[0]),
                      "zero_point": int(q.zero_point.reshape(-1)[0]),
                      **stats.ranges[q.dq.name].to_dict()}
        elif q.kind in ("weight", "lookup"):
            entry["sqnr_db"] = _weight_sqnr(q, row, index, nodes)
        inputs.append(entry)
    local = [e["local_sqnr_db"] for e in inputs if e.get("local_sqnr_db") is not None]
    weight = [e["sqnr_db"] for e in inputs if e.get("sqnr_db") is not None]
    accumulated = stats.accumulated.get(row.node.name)
    return {"node": row.node.name, "op": row.node.op_type, "depth": row.depth,
            "weight_sqnr_db": min(weight, default=None),
            "local_sqnr_db": min(local, default=None),
            "accumulated_sqnr_db": None if accumulated is None else db(accumulated.sqnr_db),
            "only_layer_sqnr_db": db(only),
            "float_gain_db": None if without is None else db(without - stats.output.sqnr_db),
            "clipped": max((e["clipped"] for e in inputs if "clipped" in e), default=None),
            "decision": _decision(row, rules), "inputs": inputs}


def build_report(fp32: ir.Model, quantized: ir.Model, data: Iterable[Feed], *,
                 batches: int = 8, batch_size: int = 8, top: int = 3, device: str = "cpu",
                 leave_one_out: bool = False, progress: Progress | None = None,
                 names: tuple[str, str] = ("fp32", "quant")) -> dict:
    """The report of ``quantized`` against ``fp32`` (changed in place: prepared) on the
    first ``batches`` batches of ``data``: one row per node that reads a quantizer, the
    ``top`` culprits by only-this-layer damage with fixes measured for each, and with
    ``leave_one_out`` what the output gains with each node alone left float.  The models
    run 2 + rows + fixes times per batch (and rows more with ``leave_one_out``)."""
    began = time.perf_counter()
    progress = progress or Progress(quiet=True)
    reference = prepared_reference(fp32, quantized)
    rows, outputs = _checked(quantized, reference, names)
    activations = list({q.dq.name: q for row in rows for q in row.inputs.values()
                        if q.kind == "activation"}.values())
    config, stored = stored_config(quantized), stored_report(quantized)
    activation_types = tuple(config.get("target", {}).get("activations", ("uint16", "int16")))
    variants = Variants(quantized, reference)
    with TempDir("report") as folder:
        spill = Spill(folder)
        spill.fill(reference, data, batch_size, batches)
        stats = paired_pass(quantized, reference, activations,
                            _row_outputs(quantized, reference, rows), outputs, spill, device,
                            progress)
        only = {row.node.name: output_energy(variants.only(row), outputs, spill, device).sqnr_db
                for row in progress(rows, "report: only this layer quantized")}
        without = ({row.node.name: output_energy(variants.all_but(row), outputs, spill,
                                                 device).sqnr_db
                    for row in progress(rows, "report: every layer quantized but this one")}
                   if leave_one_out else {})
        ranked = sorted((row for row in rows if np.isfinite(only[row.node.name])),
                        key=lambda row: only[row.node.name])[:top]
        culprits, fixes = [], 0
        for row in progress(ranked, "report: fixes for the culprits"):
            measured = [(fix, output_energy(variants.only(row, fix), outputs, spill,
                                            device).sqnr_db)
                        for fix in candidate_fixes(row, activation_types)]
            culprits.append(_culprit(row, only[row.node.name], measured))
            fixes += len(measured)
    decisions = stored.get("decisions", {})
    nodes = {node.name: node for node in reference.graph}
    return {
        "format": REPORT_FORMAT, "fp32": names[0], "quantized": names[1],
        "target": config.get("target", {}).get("name"),
        "samples": spill.samples, "batches": spill.count,
        "output_sqnr_db": db(stats.output.sqnr_db),
        "rows": [_row_entry(row, stats, only[row.node.name], without.get(row.node.name),
                            decisions.get(row.node.name, []), nodes) for row in rows],
        "culprits": culprits,
        "float_nodes": stored.get("float_nodes", {}),
        "overrides": stored.get("overrides", []),
        "target_rules": stored.get("target_rules", {}),
        "allocation": stored.get("allocation", {}),
        "cost": {"seconds": round(time.perf_counter() - began, 2),
                 "model_runs": (2 + len(rows) + len(without) + fixes) * spill.count},
    }
