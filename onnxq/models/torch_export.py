"""One torch -> ONNX export routine for every reference model (TorchScript exporter)."""

from __future__ import annotations

import warnings
from pathlib import Path


def export_module(net, example, path: str | Path, input_name: str, opset: int = 17,
                  fold_constants: bool = True, output_name: str = "logits",
                  dynamic: tuple[dict[int, str], dict[int, str]] | None = None) -> Path:
    """Export ``net`` (eval mode), one input and one output, to ``path``.

    ``dynamic`` gives the (input, output) axes that stay symbolic; by default the batch dim
    of both.  ``fold_constants=False`` keeps BatchNormalization unfused.
    """
    import torch

    path = Path(path)
    inputs, outputs = dynamic or ({0: "batch"}, {0: "batch"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), example, str(path), opset_version=opset, dynamo=False,
                          do_constant_folding=fold_constants,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: inputs, output_name: outputs})
    return path
