"""The Python API: quantize a model file with a calibration source."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq.allocate.jobs import connect
from onnxq.allocate.pareto import plot as plot_pareto
from onnxq.analysis.output_check import check_written
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.io.data import Limited, model_inputs, random_feed
from onnxq.io.model_io import check_output_folder, external_folder, load_model, save_model
from onnxq.io.tempfiles import remove_stale
from onnxq.pipeline import QuantReport, check_reiterable, quantize_model
from onnxq.progress import Progress
from onnxq.spec import QuantPlan


def default_output(model_path: str | os.PathLike, config: QuantConfig) -> Path:
    """``model.int8.onnx`` (or ``model.int4.onnx``) next to the input."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.{config.weights}.onnx")


def check_output_path(model_path: Path, output_path: Path, option: str = "-o") -> None:
    """Refuse to overwrite the input model."""
    same = output_path.exists() and output_path.resolve() == model_path.resolve()
    if same or output_path.absolute() == model_path.absolute():
        raise OnnxqError(f"output path {output_path} is the input model; "
                         f"choose another {option} path (the input is never overwritten)")


def _check_side_output(model_path: Path, output_path: Path, path: Path, option: str) -> None:
    """Refuse, before the run, a side output (``--plan-out``, ``--pareto``) that would
    overwrite the input or the output model or lands in a folder that cannot be written."""
    check_output_path(model_path, path, option)
    if path.absolute() == output_path.absolute():
        raise OnnxqError(f"{option} {path} is the output model's path; choose another")
    check_output_folder(path, option)


def _write_side_output(output_path: Path, path: Path, text: str, option: str) -> None:
    """Write a side output after the model, or one error line saying the model is written."""
    try:
        path.write_text(text)
    except OSError as exc:
        raise OnnxqError(f"wrote {output_path}, but cannot write {option} {path} "
                         f"({exc.strerror or type(exc).__name__})") from None


def quantize(model_path: str | os.PathLike, output_path: str | os.PathLike | None,
             calibration: Iterable[Mapping[str, np.ndarray]] | None,
             config: QuantConfig | None = None, quiet: bool = False,
             model: ir.Model | None = None, plan: QuantPlan | None = None,
             plan_out: str | os.PathLike | None = None,
             pareto_out: str | os.PathLike | None = None,
             ray: str | None = None) -> QuantReport:
    """Quantize the model at ``model_path`` and write the QDQ model to ``output_path``.

    ``calibration`` is any iterable of feed dicts ``{input_name: array}`` (each with a
    batch dim), e.g. :class:`onnxq.io.data.ImageFolder`; at most ``config.samples`` are used.
    It may be None for weight-only quantization (``activations="none"``).
    ``model`` is the model at ``model_path`` when the caller has already loaded it.
    ``plan`` (``QuantPlan.from_json`` of an edited ``plan_out``) replaces annotation;
    ``plan_out`` is where the run's plan is written, after the model.  Under a weight
    budget, ``pareto_out`` is where the measured trade-off goes (JSON, and a PNG beside
    it); ``ray`` runs bit allocation's jobs on that Ray cluster.
    """
    config = config or QuantConfig()
    model_path = Path(model_path)
    output_path = Path(output_path) if output_path else default_output(model_path, config)
    check_output_path(model_path, output_path)
    sides = {option: Path(path) for option, path in
             (("--plan-out", plan_out), ("--pareto", pareto_out)) if path is not None}
    if "--pareto" in sides and config.budget is None:
        raise OnnxqError("--pareto measures bit allocation across budgets; add "
                         "--avg-weight-bits or --size-mb")
    if "--pareto" in sides and calibration is None:
        raise OnnxqError("--pareto measures each plan on held-out calibration samples; give "
                         "--calib (or drop --pareto with --calib none)")
    for option, path in sides.items():
        _check_side_output(model_path, output_path, path, option)
    if ray is not None:
        if config.budget is None:
            raise OnnxqError("--ray runs bit allocation's jobs; add --avg-weight-bits or "
                             "--size-mb (or drop --ray)")
        connect(ray)  # an unreachable cluster is refused before the run, not in it
    remove_stale()  # what killed runs left in the temporary folder
    remove_stale(output_path.parent)  # and beside their outputs
    check_reiterable(calibration, config)
    if model is None:
        model = load_model(model_path)
    external = external_folder(model) is not None  # external data in, external data out
    total = len(calibration) if hasattr(calibration, "__len__") else config.samples
    if config.samples is not None and total is not None:
        total = min(total, config.samples)
    data = None if calibration is None else Remembered(Limited(calibration, config.samples))
    inputs = model_inputs(model)
    report = quantize_model(model, data, config, Progress(quiet), total=total, plan=plan,
                            pareto="--pareto" in sides, ray=ray)

    def verify(written: Path) -> None:
        feed = data.first if data is not None else None
        if feed is None:
            feed = random_feed(np.random.default_rng(config.seed), inputs, dynamic=32)
        report.output_cosine = check_written(model_path, written, feed, config.min_cosine,
                                             config.device, random=data is None,
                                             fp4_runtime=config.target.runtime
                                             if config.fp4_weights else None)

    save_model(model, output_path, verify, external)
    if "--plan-out" in sides:
        _write_side_output(output_path, sides["--plan-out"], report.plan, "--plan-out")
    if "--pareto" in sides:
        path = sides["--pareto"]
        _write_side_output(output_path, path, json.dumps(report.pareto, indent=1), "--pareto")
        plot_pareto(path, report.pareto)
    return report


class Remembered:
    """A feed source that keeps its first feed (for the check of the written model)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]):
        self.feeds = feeds
        self.first: dict[str, np.ndarray] | None = None

    def __iter__(self):
        for feed in self.feeds:
            if self.first is None:
                self.first = dict(feed)
            yield feed
