"""The report's measurements, streamed batch by batch: local, accumulated and
only-this-layer SQNR, activation ranges, clipping and histograms.  The batches are spilled
to a temporary folder once, so memory does not grow with their number."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq.calibrate.stream import batches, stream_outputs
from onnxq.io.data import Feed, model_inputs
from onnxq.numerics.affine import QTYPES, fake_quantize
from onnxq.progress import Progress
from onnxq.report.pairing import Quantizer

BINS = 48
"""Histogram bins over an activation's grid range, widened by a quarter on each side."""


def db(value: float) -> float | None:
    """A dB figure for JSON: rounded, None where nothing was lost (infinite)."""
    return None if math.isinf(value) or math.isnan(value) else round(value, 2)


@dataclasses.dataclass
class Energy:
    """Running sums of a reference's squares and of its error's."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, reference: np.ndarray, approx: np.ndarray) -> None:
        ref = reference.astype(np.float64)
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum((ref - approx) ** 2))

    @property
    def sqnr_db(self) -> float:
        """10 log10(signal / noise); inf when there is no noise."""
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(max(self.signal, 1e-30) / self.noise)


class RangeStats:
    """An activation quantizer seen on data: its input's extremes, how much of it the grid
    clips, its local SQNR (input vs dequantized) and a fixed-bin histogram."""

    def __init__(self, quantizer: Quantizer):
        self.grid = QTYPES[quantizer.qtype]
        self.step = float(quantizer.scale.reshape(-1)[0])
        self.zero_point = int(quantizer.zero_point.reshape(-1)[0])
        self.low = (self.grid.qmin - self.zero_point) * self.step
        self.high = (self.grid.qmax - self.zero_point) * self.step
        width = max(self.high - self.low, 1e-12)
        self.edges = np.linspace(self.low - width / 4, self.high + width / 4, BINS + 1)
        self.counts = np.zeros(BINS, np.int64)
        self.outside = [0, 0]
        """Elements below and above the histogram's edges."""
        self.seen = [math.inf, -math.inf]
        self.clipped = 0
        self.elements = 0
        self.local = Energy()

    def add(self, pre: np.ndarray) -> None:
        """Fold in a batch of the quantizer's input (its Q/DQ output computed here, exactly
        as ONNX's QuantizeLinear/DequantizeLinear do)."""
        flat = pre.reshape(-1)
        post = fake_quantize(flat, np.float32(self.step), np.int64(self.zero_point), self.grid)
        self.seen = [min(self.seen[0], float(flat.min())), max(self.seen[1], float(flat.max()))]
        half = self.step / 2
        self.clipped += int(np.count_nonzero((flat < self.low - half)
                                             | (flat > self.high + half)))
        self.elements += flat.size
        self.counts += np.histogram(flat, self.edges)[0]
        self.outside[0] += int(np.count_nonzero(flat < self.edges[0]))
        self.outside[1] += int(np.count_nonzero(flat > self.edges[-1]))
        self.local.add(flat, post)

    def to_dict(self) -> dict:
        return {"range": [round(self.low, 6), round(self.high, 6)],
                "observed": [round(v, 6) for v in self.seen],
                "clipped": self.clipped / max(self.elements, 1),
                "local_sqnr_db": db(self.local.sqnr_db),
                "histogram": {"edges": [round(float(e), 6) for e in self.edges],
                              "counts": self.counts.tolist(), "outside": self.outside}}


class Spill:
    """The report's batches and the FP32 outputs on them, one ``.npz`` file each in
    ``folder``, read back one batch at a time."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0
        self.samples = 0

    def fill(self, model: ir.Model, data: Iterable[Feed], batch_size: int, limit: int) -> None:
        """Batch ``data`` as ``model``'s inputs allow and keep the first ``limit`` batches."""
        for feed in batches(data, model_inputs(model), batch_size):
            if self.count == limit:
                break
            np.savez(self.folder / f"feed{self.count}.npz", **feed)
            self.count += 1
            self.samples += len(next(iter(feed.values())))

    def feeds(self) -> Iterator[Feed]:
        for index in range(self.count):
            with np.load(self.folder / f"feed{index}.npz") as arrays:
                yield dict(arrays)

    def keep_references(self, index: int, outputs: dict[str, np.ndarray]) -> None:
        np.savez(self.folder / f"reference{index}.npz", **outputs)

    def references(self) -> Iterator[dict[str, np.ndarray]]:
        for index in range(self.count):
            with np.load(self.folder / f"reference{index}.npz") as arrays:
                yield dict(arrays)


def stream(model: ir.Model, names: list[str], spill: Spill, device: str
           ) -> Iterator[dict[str, np.ndarray]]:
    """The tensors ``names`` of ``model`` on each spilled batch."""
    return stream_outputs(model, names, spill.feeds(), device=device, batch_size=1)


@dataclasses.dataclass
class PairedStats:
    """What one pass of the quantized model beside its FP32 reference measured."""

    ranges: dict[str, RangeStats]
    """DequantizeLinear name -> its activation's statistics."""
    accumulated: dict[str, Energy]
    """Row node name -> its output against the FP32 model's."""
    output: Energy


def paired_pass(quantized: ir.Model, reference: ir.Model, quantizers: list[Quantizer],
                row_outputs: dict[str, tuple[str, str]], outputs: list[str], spill: Spill,
                device: str, progress: Progress) -> PairedStats:
    """Run both models over the spilled batches and fold every statistic (the FP32
    outputs are spilled beside each batch for the layer sweep).  ``row_outputs`` maps a
    row's node to its output's name in the quantized model and in the reference."""
    pre = {q.dq.name: q.dq.inputs[0].producer().inputs[0].name for q in quantizers}
    q_names = list(dict.fromkeys([*pre.values(), *(q for q, _ in row_outputs.values()),
                                  *outputs]))
    r_names = list(dict.fromkeys([*(r for _, r in row_outputs.values()), *outputs]))
    stats = PairedStats({q.dq.name: RangeStats(q) for q in quantizers},
                        {node: Energy() for node in row_outputs}, Energy())
    quantized_runs = stream(quantized, q_names, spill, device)
    reference_runs = stream(reference, r_names, spill, device)
    for index in progress(range(spill.count), "report: FP32 beside quantized"):
        # next() by hand: zip/enumerate would keep the last batch alive while the next runs
        got, ref = next(quantized_runs), next(reference_runs)
        spill.keep_references(index, {name: ref[name] for name in outputs})
        for name, tensor in pre.items():
            stats.ranges[name].add(got[tensor])
        for node, (q, r) in row_outputs.items():
            if got[q].shape == ref[r].shape:
                stats.accumulated[node].add(ref[r], got[q])
        for name in outputs:
            stats.output.add(ref[name], got[name])
        del got, ref  # before the next batch's tensors arrive
    return stats


def output_energy(model: ir.Model, outputs: list[str], spill: Spill, device: str) -> Energy:
    """``model``'s graph outputs against the spilled FP32 ones, over every batch."""
    energy = Energy()
    runs, references = stream(model, outputs, spill, device), spill.references()
    for _ in range(spill.count):
        got, ref = next(runs), next(references)
        for name in outputs:
            energy.add(ref[name], got[name])
    return energy
