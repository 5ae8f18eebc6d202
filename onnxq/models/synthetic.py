"""Small synthetic CNNs with seeded weights, exported to ONNX, for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxq.models.torch_export import export_module

INPUT_NAME = "image"


def _small_cnn(seed: int):
    import torch
    from torch import nn

    class Net(nn.Module):
        """Conv/ReLU6, depthwise, residual Add, MaxPool, Concat, ConvTranspose, GAP, Linear."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 16, 3), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6())
            self.project = nn.Conv2d(16, 16, 1)
            self.pool = nn.MaxPool2d(2)
            self.side = nn.Conv2d(16, 8, 1)
            self.up = nn.ConvTranspose2d(24, 8, 2, stride=2)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.project(self.dw(x))
            x = self.pool(x)
            x = torch.cat([x, torch.relu(self.side(x))], dim=1)
            x = torch.relu(self.up(x))
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(seed)
    return Net().eval()


def export_small_cnn(path: str | Path, seed: int = 0, opset: int = 17) -> Path:
    """Export the small CNN (input ``image``: N x 3 x 32 x 32, dynamic N)."""
    import torch

    return export_module(_small_cnn(seed), torch.zeros(1, 3, 32, 32), path, INPUT_NAME, opset)


def image_feeds(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` smooth random images (one sample per feed) for the small CNN."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        coarse = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        feeds.append({INPUT_NAME: np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)})
    return feeds


def _silu_cnn(seed: int):
    """Conv + SiLU stages (as YOLO builds them), one channel with a long negative tail."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.body = nn.Conv2d(16, 16, 3, padding=1)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            x = nn.functional.silu(self.stem(x))
            return torch.sigmoid(self.head(nn.functional.silu(self.body(x))))

    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():
        net.body.bias[0] = -40.0  # a pre-activation SiLU flattens to 0: its range need not hold it
        net.body.weight[0] *= 20.0
    return net


def export_silu_cnn(path: str | Path, seed: int = 0) -> Path:
    """Export the SiLU CNN (input ``image``: N x 3 x 32 x 32, dynamic N)."""
    import torch

    return export_module(_silu_cnn(seed), torch.zeros(1, 3, 32, 32), path, INPUT_NAME)


MLP_INPUT = "features"


def _mlp(seed: int, sensitive: int | None):
    """Four 64-wide Linear/ReLU layers and a 10-way head; layer ``sensitive`` gets one
    outlier weight per output channel, so a 4-bit grid rounds its other weights away."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = [m for _ in range(4) for m in (nn.Linear(64, 64), nn.ReLU())]
    net = nn.Sequential(*layers, nn.Linear(64, 10)).eval()
    if sensitive is not None:
        with torch.no_grad():
            net[2 * sensitive].weight[:, 0] *= 40.0
            net[2 * sensitive].weight[:, 1:] *= 2.0
    return net


def export_mlp(path: str | Path, seed: int = 0, sensitive: int | None = None) -> Path:
    """Export the MLP (input ``features``: N x 64, dynamic N)."""
    import torch

    return export_module(_mlp(seed, sensitive), torch.zeros(1, 64), path, MLP_INPUT)


def mlp_feeds(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` Gaussian feature vectors (one sample per feed) for the MLP."""
    rng = np.random.default_rng(seed)
    return [{MLP_INPUT: rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(count)]


def _outlier_cnn(seed: int, outlier: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    convs = [nn.Conv2d(3 if k == 0 else 16, 16, 3, padding=1) for k in range(6)]
    net = nn.Sequential(*(m for conv in convs for m in (conv, nn.ReLU())))[:-1].eval()
    with torch.no_grad():  # channel 0 of conv ``outlier``'s input 100x larger, same function
        convs[outlier - 1].weight[0] *= 100.0
        convs[outlier - 1].bias[0] *= 100.0
        convs[outlier].weight[:, 0] /= 100.0
    return net


def export_outlier_cnn(path: str | Path, seed: int = 0, outlier: int = 3) -> Path:
    """Export six 3x3 Conv/ReLU layers (input ``image``: N x 3 x 32 x 32, dynamic N) where
    channel 0 of conv ``outlier``'s input is 100x the others (the FP32 function unchanged):
    one per-tensor activation grid for that input rounds its other channels away."""
    import torch

    return export_module(_outlier_cnn(seed, outlier), torch.zeros(1, 3, 32, 32), path,
                         INPUT_NAME)
