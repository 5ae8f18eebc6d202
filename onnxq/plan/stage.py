"""The plan stage: decide what is quantized and how (or take the user's plan), before
anything is measured."""

from __future__ import annotations

import onnx_ir as ir

from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.graph import model_values
from onnxq.plan.annotate import annotate
from onnxq.spec import QuantPlan
from onnxq.state import QuantState, RunContext


def check_plan(model: ir.Model, plan: QuantPlan, config: QuantConfig) -> None:
    """Refuse a given plan, bound to the prepared ``model`` (``plan.bind``), that does not
    fit it (one line naming the first mismatch)."""
    def fail(what: str) -> None:
        raise OnnxqError(f"--plan {what}: it was written for another model or other flags; "
                         "write it again with --plan-out from this model and flags")

    values, initializers = model_values(model), model.graph.initializers
    if plan.activations and not config.needs_data:
        fail("quantizes activations, but --calib none quantizes weights only")
    for name in plan.activations:
        if name not in values:
            fail(f"names activation {name!r}, which the prepared model lacks")
    for name, spec in plan.weights.items():
        if name not in initializers or initializers[name].dtype != ir.DataType.FLOAT:
            fail(f"names weight {name!r}, which is no float initializer of the prepared model")
        rank = len(initializers[name].const_value.shape)
        if spec.axis is not None and not 0 <= spec.axis < rank:
            fail(f"gives weight {name!r} (rank {rank}) channel axis {spec.axis}")
        if spec.block_size and not config.target.blocked_weights:
            fail(f"gives weight {name!r} blocks, which --target {config.target.name} does not "
                 "run")
        if spec.block_size and (config.learned_rounding or config.precalibrate):
            fail(f"gives weight {name!r} blocks, which learned rounding and pre-calibration "
                 "do not handle yet (use --rounding nearest --no-precalibrate)")
    for name, bias in plan.biases.items():
        if name not in initializers or bias.weight not in plan.weights:
            fail(f"gives bias {name!r} an int32 grid without quantizing it and its weight "
                 f"{bias.weight!r}")
        if plan.weights[bias.weight].block_size:
            fail(f"gives bias {name!r} an int32 grid, but its weight {bias.weight!r} blocks "
                 "(an int32 bias needs one weight scale per output channel)")
    for name, uses in plan.uses.items():
        if name not in plan.activations:
            fail(f"lists readers of {name!r}, which it does not quantize")
        for node_name, index in uses:
            node = plan.nodes.get(node_name)
            read = node.inputs[index] if node is not None and index < len(node.inputs) else None
            if read is None or read.name != name:
                fail(f"says node {node_name!r} reads {name!r} as input {index}")
    outputs = {value.name for value in model.graph.outputs}
    for name in plan.outputs:
        if name not in outputs or name not in plan.activations:
            fail(f"reads graph output {name!r} quantized, which is no quantized graph output")
    for a, b in plan.parent.items():
        if a not in plan.activations or b not in plan.activations:
            fail(f"groups {a!r} with {b!r}, which it does not both quantize")


def plan_stage(state: QuantState, ctx: RunContext) -> list[str]:
    """Annotate the prepared model (or check and take ``ctx.plan``); refuse a model with
    nothing to quantize."""
    if ctx.plan is not None:
        state.plan = ctx.plan.bind(state.model)
        check_plan(state.model, state.plan, ctx.config)
    else:
        state.plan = annotate(state.model, ctx.config, state.target_rules)
    if not state.plan.weights and not state.plan.activations:
        raise OnnxqError("nothing to quantize: the model has no Conv/Gemm/MatMul/Add with float "
                         "inputs (or --exclude matched them all)")
    return []
