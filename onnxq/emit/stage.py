"""The emit stage: write every Q/DQ the plan and its qparams call for."""

from __future__ import annotations

from onnxq.emit.qdq import EmitQDQPass
from onnxq.state import QuantState, RunContext


def emit_stage(state: QuantState, ctx: RunContext) -> list[str]:
    """``EmitQDQPass`` on the state's model."""
    EmitQDQPass(state.plan, state.activations, state.weights)(state.model)
    return ["EmitQDQPass"]
