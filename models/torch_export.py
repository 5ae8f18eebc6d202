"""One torch -> ONNX export routine for every reference model (TorchScript exporter)."""

from __future__ import annotations

import warnings
from pathlib import Path


def export_module(net, example, path: str | Path, input_name: str, opset: int = 17,
                  fold_constants: bool = True) -> Path:
    """Export ``net`` (eval mode) with a dynamic batch dim; the output is named ``logits``.

    ``fold_constants=False`` keeps BatchNormalization unfused.
    """
    import torch

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), example, str(path), opset_version=opset, dynamo=False,
                          do_constant_folding=fold_constants,
                          input_names=[input_name], output_names=["logits"],
                          dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}})
    return path
