"""Which weight MatMul/Gemm nodes ONNX Runtime's CPU optimizer fuses with their weight's
DequantizeLinear into ``com.microsoft.MatMulNBits``, and why the others are not: its
selector's rules (``DQMatMulNodeGroupSelector``), read from the graph."""

from __future__ import annotations

import onnx_ir as ir

from onnxq.config import MIN_BLOCK

FUSED_TYPES = {ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT8, ir.DataType.UINT8}
"""Weight integers the fusion takes."""


def _weight_dq(node: ir.Node) -> ir.Node | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    producer = weight.producer() if weight is not None else None
    if (producer is None or producer.op_type != "DequantizeLinear"
            or producer.inputs[0].const_value is None):
        return None
    return producer


def _granularity_problem(dq: ir.Node) -> str | None:
    scale = dq.inputs[1].const_value
    axis = dq.attributes.get_int("axis", 1)
    block = dq.attributes.get_int("block_size", 0)
    if block:
        if axis != 0:
            return f"blocks along axis {axis}, not along K (axis 0)"
        if block < MIN_BLOCK or block & (block - 1):
            return f"block size {block} is not a power of two of at least {MIN_BLOCK}"
        return None
    if scale.size > 1 and axis != 1:
        return f"per-channel scales on axis {axis}, not on N (axis 1)"
    return None


def _problem(node: ir.Node, dq: ir.Node) -> str | None:
    """Why ``node`` with weight ``dq`` is not fused (None: it is)."""
    weight = dq.inputs[0].const_value
    a = node.inputs[0].producer() if node.inputs[0] is not None else None
    if a is not None and a.op_type == "DequantizeLinear":
        return "its input is quantized too (MatMulNBits takes float activations: weight-only)"
    if weight.dtype not in FUSED_TYPES:
        return f"{weight.dtype.name.lower()} weights"
    if len(weight.shape) != 2:
        return f"rank-{len(weight.shape)} weight (the fusion takes [K, N])"
    if len(dq.outputs[0].uses()) != 1 or dq.outputs[0].is_graph_output():
        return "its weight's DequantizeLinear has other readers"
    users = [user for user, _ in node.outputs[0].uses()]
    only = users[0].op_type if len(users) == 1 else None
    if node.op_type == "Gemm" and only == "Relu":
        return "ORT fuses the Gemm with its Relu (FusedGemm) first"
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    if node.op_type == "MatMul" and rank == 2 and only == "Add":
        return "ORT turns a 2-D MatMul and its Add into a Gemm first (3-D inputs are fused)"
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0) or node.attributes.get_int("transB", 0):
            return "Gemm with transA/transB"
        if node.attributes.get_float("alpha", 1.0) != 1.0:
            return "Gemm with alpha != 1"
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and (bias.const_value is None or len(bias.const_value.shape) != 1):
            return "Gemm bias is not a constant [N]"
    return _granularity_problem(dq)


def matmulnbits_fusion(model: ir.Model) -> dict[str, str | None]:
    """Main-graph MatMul/Gemm nodes with a dequantized constant weight -> None when ORT CPU
    fuses them into MatMulNBits, else why not."""
    found = {}
    for node in model.graph:
        if node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx"):
            dq = _weight_dq(node)
            if dq is not None:
                found[node.name] = _problem(node, dq)
    return found


def fusion_summary(model: ir.Model) -> dict:
    """The fusion's outcome for the report: how many fuse, and each other node's reason;
    empty when no MatMul/Gemm weight is 4-bit or blocked."""
    fusion = matmulnbits_fusion(model)
    relevant = any(
        dq.inputs[0].const_value.dtype in (ir.DataType.INT4, ir.DataType.UINT4)
        or dq.attributes.get_int("block_size", 0)
        for node in model.graph if node.name in fusion and (dq := _weight_dq(node)))
    if not relevant:
        return {}
    return {"fused": sum(reason is None for reason in fusion.values()),
            "weights": len(fusion),
            "not_fused": {name: reason for name, reason in sorted(fusion.items()) if reason}}


def fusion_line(summary: dict) -> str:
    """``fusion_summary`` in one line, the first reason a node is not fused included."""
    line = (f"ORT CPU fuses {summary['fused']} of {summary['weights']} weight MatMul/Gemm "
            "nodes into MatMulNBits")
    if summary["not_fused"]:
        name, reason = next(iter(summary["not_fused"].items()))
        line += f" (not {name}: {reason}" + (
            f"; {len(summary['not_fused']) - 1} more" if len(summary["not_fused"]) > 1 else "")
        line += ")"
    return line
