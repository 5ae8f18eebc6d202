"""The prepare stage: normalize and check the graph, then run the FP32 passes in place."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    LiftSubgraphInitializersToMainGraphPass,
    NameFixPass,
    RemoveInitializersFromInputsPass,
    RemoveUnusedNodesPass,
    TopologicalSortPass,
)

from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.io.model_io import check_model
from onnxq.prepare.cross_layer_equalization import CrossLayerEqualizationPass
from onnxq.prepare.float16_to_float32 import Float16ToFloat32Pass
from onnxq.prepare.fold_constants import FoldConstantsPass
from onnxq.prepare.fuse_batchnorm import FuseBatchNormPass
from onnxq.prepare.fuse_matmul_add import FuseMatMulAddPass
from onnxq.prepare.fuse_pad_into_conv import FusePadIntoConvPass
from onnxq.prepare.keep_reduced_dims import KeepReducedDimsPass
from onnxq.prepare.localize_shape import LocalizeShapePass
from onnxq.prepare.opset_upgrade import OpsetUpgradePass
from onnxq.prepare.static_shapes import FixInputShapesPass, dynamic_inputs
from onnxq.prepare.tolerant_shape_inference import TolerantShapeInferencePass
from onnxq.prepare.untranspose_gemm_weights import UntransposeGemmWeightsPass
from onnxq.state import QuantState, RunContext


def run_passes(passes: list[ir.passes.PassBase], model: ir.Model) -> None:
    """Run ``passes`` in order; a pass's OnnxqError reaches the user as it is."""
    try:
        ir.passes.PassManager(passes)(model)
    except ir.passes.PassError as exc:
        cause = exc.__cause__
        while isinstance(cause, ir.passes.PassError):  # the pass manager nests its errors
            cause = cause.__cause__
        if isinstance(cause, OnnxqError):
            raise cause from None
        raise


def normalize(model: ir.Model) -> None:
    """Put the graph in the form every later pass assumes, then check it: nodes in
    topological order, no initializer listed as an input (older exports' weights-as-inputs
    would stay inputs of the quantized model), ``onnx.checker`` clean."""
    try:
        run_passes([TopologicalSortPass(), RemoveInitializersFromInputsPass()], model)
    except ir.passes.PassError as exc:
        reason = str(exc.__cause__ or exc).splitlines()[0][:160]
        raise OnnxqError(f"the graph cannot be put in topological order ({reason}); it has a "
                         "cycle or a broken edge: fix or re-export the model") from None
    check_model(model, "the model")


def prepare_passes(config: QuantConfig) -> list[ir.passes.PassBase]:
    """FP32 passes run before annotation: clean-up, fusion, equalization."""
    passes: list[ir.passes.PassBase] = [
        Float16ToFloat32Pass(),
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        LiftSubgraphInitializersToMainGraphPass(),
        FoldConstantsPass(),
    ]
    if config.fuse:
        passes += [FuseBatchNormPass(), FuseMatMulAddPass(), FusePadIntoConvPass()]
    if config.target.keep_reduced_dims:
        passes.append(KeepReducedDimsPass())
    if config.block_size is not None:
        passes.append(UntransposeGemmWeightsPass())
    if config.equalize != "none":
        passes.append(CrossLayerEqualizationPass(
            clip_policy="relu" if config.equalize == "relu" else "skip"))
    return [*passes, RemoveUnusedNodesPass(), TolerantShapeInferencePass(), LocalizeShapePass(),
            NameFixPass(), TopologicalSortPass()]


def prepare(model: ir.Model, config: QuantConfig, opset: int | None = None) -> list[str]:
    """Normalize and check the graph, then run the FP32 passes (and an upgrade to
    ``opset``, by default the one the config's types need, where the model's is lower) in
    place; return their names."""
    normalize(model)
    passes = prepare_passes(config)
    opset = opset or config.required_opset
    if model.opset_imports.get("", 1) < opset:
        passes.insert(0, OpsetUpgradePass(opset))
    run_passes(passes, model)
    return [type(p).__name__ for p in passes]


def input_shapes(state: QuantState, ctx: RunContext) -> dict[str, tuple[int, ...]]:
    """The fixed input shapes: ``--input-shape``, and where the target needs static shapes,
    those of the first calibration sample for the other dynamic inputs."""
    shapes = dict(ctx.config.input_shapes)
    if not ctx.config.target.static_shapes:
        return shapes
    missing = [name for name in dynamic_inputs(state.model) if name not in shapes]
    if missing and ctx.data is not None and iter(ctx.data) is not ctx.data:
        first = next(iter(ctx.data), {})
        shapes |= {name: tuple(first[name].shape) for name in missing if name in first}
        missing = [name for name in missing if name not in shapes]
    if missing:
        raise OnnxqError(f"--target {ctx.config.target.name} needs static input shapes, and "
                         f"input {missing[0]!r} is dynamic: pass --input-shape "
                         f"{missing[0]}=1x...")
    return shapes


def prepare_stage(state: QuantState, ctx: RunContext) -> list[str]:
    """The stage: the static input shapes the target needs (or ``--input-shape`` gives)
    first, so shape computations fold to constants; then ``prepare`` on the state's model, to
    the opset a given plan's types need (else the config's)."""
    config = ctx.config
    passes = []
    if config.target.static_shapes or config.input_shapes:
        shapes = input_shapes(state, ctx)
        if shapes:
            run_passes([FixInputShapesPass(shapes), TolerantShapeInferencePass()], state.model)
            state.target_rules["input shapes fixed"] += len(shapes)
            passes.append("FixInputShapesPass")
    opset = ctx.plan.required_opset(config.min_sqnr is not None) if ctx.plan else None
    return passes + prepare(state.model, config, opset)
