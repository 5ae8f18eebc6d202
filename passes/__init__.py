"""onnxq's graph passes, each an onnx_ir pass in its own module."""

from onnxq.passes.bias_correction import AnalyticBiasCorrectionPass, EmpiricalBiasCorrectionPass
from onnxq.passes.cross_layer_equalization import CrossLayerEqualizationPass
from onnxq.passes.emit_qdq import EmitQDQPass
from onnxq.passes.float16_to_float32 import Float16ToFloat32Pass
from onnxq.passes.fold_constants import FoldConstantsPass
from onnxq.passes.fuse_batchnorm import FuseBatchNormPass
from onnxq.passes.fuse_matmul_add import FuseMatMulAddPass
from onnxq.passes.fuse_pad_into_conv import FusePadIntoConvPass
from onnxq.passes.learned_rounding import LearnedRoundingPass
from onnxq.passes.localize_shape import LocalizeShapePass
from onnxq.passes.opset_upgrade import OpsetUpgradePass
from onnxq.passes.precalibrate_weights import PreCalibrateWeightsPass
from onnxq.passes.refine_ranges import RefineActivationRangesPass
from onnxq.passes.tolerant_shape_inference import TolerantShapeInferencePass

__all__ = [
    "AnalyticBiasCorrectionPass",
    "CrossLayerEqualizationPass",
    "EmitQDQPass",
    "EmpiricalBiasCorrectionPass",
    "Float16ToFloat32Pass",
    "FoldConstantsPass",
    "FuseBatchNormPass",
    "FuseMatMulAddPass",
    "FusePadIntoConvPass",
    "LearnedRoundingPass",
    "LocalizeShapePass",
    "OpsetUpgradePass",
    "PreCalibrateWeightsPass",
    "RefineActivationRangesPass",
    "TolerantShapeInferencePass",
]
