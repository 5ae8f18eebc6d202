"""onnxq's graph passes, each an onnx_ir pass in its own module."""

from onnxq.passes.bias_correction import BiasCorrectionPass
from onnxq.passes.emit_qdq import EmitQDQPass
from onnxq.passes.fold_constants import FoldConstantsPass
from onnxq.passes.fuse_pad_into_conv import FusePadIntoConvPass
from onnxq.passes.opset_upgrade import OpsetUpgradePass
from onnxq.passes.tolerant_shape_inference import TolerantShapeInferencePass

__all__ = [
    "BiasCorrectionPass",
    "EmitQDQPass",
    "FoldConstantsPass",
    "FusePadIntoConvPass",
    "OpsetUpgradePass",
    "TolerantShapeInferencePass",
]
