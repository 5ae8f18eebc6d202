"""onnxq: ONNX graph-level post-training quantization to QDQ models."""

from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.pipeline import VERSION

__all__ = ["OnnxqError", "QuantConfig", "quantize"]
__version__ = VERSION
