"""The calibrate stage: one streaming sweep of the calibration data, then every qparam."""

from __future__ import annotations

from onnxq.calibrate.stream import calibrate
from onnxq.numerics.affine import WIDE
from onnxq.plan.qparams import resolve_activations, resolve_weights
from onnxq.state import QuantState, RunContext


def calibrate_stage(state: QuantState, ctx: RunContext) -> list[str]:
    """Observe the planned activations on the data (none for weight-only runs) and resolve
    the activation qparams (and their 16-bit alternatives under ``--min-sqnr``) and the
    weight qparams."""
    config = ctx.config
    observers = (calibrate(state.model, state.plan, ctx.data, **ctx.stream)
                 if config.needs_data else {})
    state.activations = resolve_activations(state.plan, observers)
    if config.min_sqnr is not None:
        state.wide = resolve_activations(state.plan, observers, WIDE)
    state.weights = resolve_weights(state.model, state.plan)
    return []
