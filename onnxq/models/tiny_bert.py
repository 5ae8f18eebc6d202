"""A small BERT-style text encoder (token ids -> logits) with seeded weights, for tests.

Weights are random but shaped like a trained encoder's: two residual channels
carry large activations (LayerNorm gains of 12), as the outlier features of real
BERT models do.  Export at opset 17 gives fused LayerNormalization; opset 14
gives the decomposed ReduceMean/Sub/Pow/Sqrt/Div form other exporters produce.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onnxq.models.torch_export import export_module

VOCAB, HIDDEN, HEADS, LAYERS, CLASSES, SEQ = 1000, 128, 4, 2, 16, 32
INPUT_NAME = "input_ids"


def _build(seed: int):
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(HIDDEN, HEADS, batch_first=True)
            self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
            self.ff = nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU(),
                                    nn.Linear(4 * HIDDEN, HIDDEN))

        def forward(self, x):
            x = self.norm1(x + self.attn(x, x, x, need_weights=False)[0])
            return self.norm2(x + self.ff(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, HIDDEN)
            self.position = nn.Parameter(torch.randn(1, SEQ, HIDDEN) * 0.1)
            self.norm = nn.LayerNorm(HIDDEN)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
            self.head = nn.Linear(HIDDEN, CLASSES)

        def forward(self, ids):
            x = self.norm(self.embed(ids) + self.position[:, : ids.shape[1]])
            for layer in self.layers:
                x = layer(x)
            return self.head(x.mean(dim=1))

    torch.manual_seed(seed)
    net = Encoder().eval()
    with torch.no_grad():
        for norm in [net.norm] + [m for layer in net.layers for m in (layer.norm1, layer.norm2)]:
            norm.weight[:2] = 12.0
    return net


def export(path: str | Path, opset: int = 17, seed: int = 0) -> Path:
    """Export the encoder with a dynamic batch to ``path``."""
    import torch

    return export_module(_build(seed), torch.zeros(1, SEQ, dtype=torch.long), path, INPUT_NAME,
                         opset)


def token_batches(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` feeds of random token ids, one sample each."""
    rng = np.random.default_rng(seed)
    return [{INPUT_NAME: rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64)} for _ in range(count)]


def feeds(split: str, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The suite's feeds: ``count`` token batches of ``split`` (calib or val)."""
    return token_batches(count, seed=seed + (1 if split == "calib" else 2))


def benchmark_splits() -> tuple[list, list]:
    """The calibration (128) and validation (256) token batches the benchmarks use."""
    return token_batches(128, seed=1), token_batches(256, seed=2)


def exports(folder: str | Path) -> Iterator[tuple[int, Path]]:
    """The encoder exported at opset 17 (fused LayerNorm) and 14 (decomposed), in ``folder``."""
    for opset in (17, 14):
        yield opset, export(Path(folder) / f"bert{opset}.onnx", opset=opset)
