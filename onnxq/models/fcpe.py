"""torchfcpe's FCPE pitch estimator (``fcpe_c_v001.pt``, conv-only), synthesized audio and
raw pitch agreement with FP32.

torchfcpe imports torchaudio (only to resample), einops and local_attention (attention
the shipped model does not use) at import time; empty stand-ins are put in their place
while it imports, so none of them needs installing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onnxq.models.metrics import cosine
from onnxq.models.torch_export import export_module

INPUT_NAME = "mel"
RATE, SECONDS = 16000, 2.0
F0_MIN, F0_MAX, BINS = 32.70, 1975.5, 360
THRESHOLD = 0.006  # the package's default voicing threshold
STAND_INS = {"torchaudio": (), "torchaudio.transforms": ("Resample",), "einops": ("rearrange",
             "repeat"), "local_attention": ("LocalAttention",)}


def missing() -> str | None:
    """Why the model cannot be built here, or None."""
    found = importlib.util.find_spec("torchfcpe")
    return None if found else "pip install --no-deps torchfcpe==0.0.4"


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    """Empty modules for torchfcpe's unused imports that are not installed."""
    added = []
    for name, attributes in STAND_INS.items():
        top = name.split(".")[0]
        if top not in added and (top in sys.modules or importlib.util.find_spec(top)):
            continue
        module = types.ModuleType(name)
        for attribute in attributes:
            setattr(module, attribute, None)
        sys.modules[name] = module
        added.append(name)
    if "torchaudio.transforms" in added:
        sys.modules["torchaudio"].transforms = sys.modules["torchaudio.transforms"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints when librosa is absent
            yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _bundled():
    """The package's bundled inference model (mel extractor and network), on CPU."""
    with _stand_ins():
        import torchfcpe

        return torchfcpe.spawn_bundled_infer_model("cpu")


def export(path: str | Path) -> Path:
    """Export the network (weight norm folded; dynamic batch and frames) to ``path``;
    ``mel`` [b, frames, 128] -> ``latent`` [b, frames, 360]."""
    import torch
    from torch.nn.utils import parametrize

    net = _bundled().model
    for module in net.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight")
    return export_module(net, torch.zeros(1, 201, 128), path, INPUT_NAME, output_name="latent",
                         dynamic=({0: "batch", 1: "frames"}, {0: "batch", 1: "frames"}))


def tone(rng: np.random.Generator) -> np.ndarray:
    """A harmonic tone with a known f0 track (65-1000 Hz; glide, vibrato, gaps)."""
    t = np.arange(int(RATE * SECONDS)) / RATE
    start, end = np.exp(rng.uniform(np.log(65), np.log(1000), 2))
    f0 = start * (end / start) ** (t / SECONDS)
    f0 *= 2 ** (rng.uniform(0, 0.5) / 12 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    harmonics = int(rng.integers(1, 9))
    wave = sum(np.sin(k * phase) / k ** rng.uniform(0.5, 2) * (k * f0 < RATE / 2)
               for k in range(1, harmonics + 1))
    envelope = np.ones_like(t)
    for _ in range(rng.integers(0, 3)):  # silent gaps
        gap = rng.uniform(0, SECONDS - 0.3)
        envelope[(t > gap) & (t < gap + rng.uniform(0.05, 0.3))] = 0
    return wave * envelope * rng.uniform(0.05, 0.5)


def speech(rng: np.random.Generator, text: str) -> np.ndarray | None:
    """``text`` spoken by espeak-ng at a random pitch, 16 kHz, or None without espeak-ng."""
    if shutil.which("espeak-ng") is None:
        return None
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-p", str(rng.integers(0, 100)), "-s",
                        str(rng.integers(120, 200)), "-w", str(wav), text], check=True,
                       capture_output=True)
        raw = np.frombuffer(wav.read_bytes()[44:], np.int16).astype(np.float64) / 32768
    audio = resample_poly(raw, 160, 441)[: int(RATE * SECONDS)]  # espeak-ng speaks at 22050 Hz
    return np.pad(audio, (0, int(RATE * SECONDS) - len(audio)))


def clips(split: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` 2 s clips: half espeak-ng speech (when installed), the rest tones; noise on
    every other clip."""
    from onnxq.models import render

    rng = np.random.default_rng(seed + (0 if split == "calib" else 1000))
    audio = []
    for i in range(count):
        clip = speech(rng, render.phrase(rng, 6)) if i % 2 else None
        clip = tone(rng) if clip is None else clip
        if i % 4 < 2:
            clip = clip + rng.normal(0, rng.uniform(0.002, 0.03), clip.shape)
        audio.append(clip.astype(np.float32))
    return audio


def feeds(split: str, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Log-mel features of ``count`` clips, from the package's own ``wav2mel``."""
    import torch

    wav2mel = _bundled().wav2mel
    return [{INPUT_NAME: wav2mel(torch.from_numpy(clip)[None, :, None], RATE).numpy()}
            for clip in clips(split, count, seed)]


def cents(latent: np.ndarray) -> np.ndarray:
    """The package's local-argmax decoding of [1, frames, 360]: cents per frame, NaN where
    unvoiced (peak <= 0.006)."""
    table = np.linspace(1200 * np.log2(F0_MIN / 10), 1200 * np.log2(F0_MAX / 10), BINS)
    y = latent[0].astype(np.float64)
    peak = y.argmax(axis=-1)
    window = np.clip(peak[:, None] + np.arange(-4, 5), 0, BINS - 1)
    weights = np.take_along_axis(y, window, axis=-1)
    found = (table[window] * weights).sum(-1) / np.maximum(weights.sum(-1), 1e-12)
    return np.where(y.max(axis=-1) > THRESHOLD, found, np.nan)


def score(reference: list[list[np.ndarray]], other: list[list[np.ndarray]]) -> dict[str, float]:
    """Share of FP32-voiced frames within 50 cents of FP32's pitch, voicing agreement and the
    mean latent cosine."""
    within = voiced = agree = frames = 0
    cosines = []
    for ref_out, out in zip(reference, other, strict=True):
        ref_cents, got = cents(ref_out[0]), cents(out[0])
        mask = ~np.isnan(ref_cents)
        within += int((np.abs(ref_cents[mask] - got[mask]) <= 50).sum())  # NaN compares False
        voiced += int(mask.sum())
        agree += int((mask == ~np.isnan(got)).sum())
        frames += len(mask)
        cosines.append(cosine(ref_out[0], out[0]))
    return {"rpa50": within / max(voiced, 1), "voicing_agree": agree / max(frames, 1),
            "latent_cosine": float(np.mean(cosines))}
