"""The emit stage: write every Q/DQ the plan and its qparams call for."""

from __future__ import annotations

from onnxq.emit.qdq import EmitQDQPass
from onnxq.state import QuantState, RunContext


def emit_stage(state: QuantState, ctx: RunContext) -> list[str]:
    """``EmitQDQPass`` on the state's model, int4 weights in the storage the config says."""
    config = ctx.config
    storage = config.weight_storage
    EmitQDQPass(state.plan, state.activations, state.weights, storage,
                config.target.int8_lookups)(state.model)
    stored = sum(spec.qtype in storage and not spec.block_size
                 for spec in state.plan.weights.values())
    if stored:
        state.target_rules[f"int4 weights stored in {storage['int4']} containers"] += stored
    return ["EmitQDQPass"]
