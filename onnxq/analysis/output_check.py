"""The check every written model passes before it is reported: ONNX Runtime loads it as a
user would (default graph optimizations), its outputs are finite and close to FP32 on a
calibration sample, and the fused graph agrees with the plain QDQ graph."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxq.emit.simulate import float_grid_weights
from onnxq.errors import OnnxqError
from onnxq.io.model_io import load_model, to_proto
from onnxq.io.pieces import WHOLE_BYTES, run_in_pieces, weight_nbytes
from onnxq.io.runtime import open_session, run
from onnxq.targets.runtimes import load_on

FUSED_FLOOR = 0.99
"""Least cosine between ORT's optimized (fused) run and the unfused QDQ graph: both compute
the same integers, so anything lower is a runtime problem, not quantization error."""


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened arrays (1.0 for two zero arrays)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if norms == 0 and not np.any(a - b) else float(a @ b / max(norms, 1e-300))


def _in_pieces(path: Path) -> bool:
    """Whether the model file holds over ``WHOLE_BYTES`` of weights (run a piece at a time:
    the check then holds one piece's weights, not the model's)."""
    return weight_nbytes(onnx.load(str(path), load_external_data=False).graph) > WHOLE_BYTES


def _outputs(source: Path, feed: Mapping[str, np.ndarray], device: str, pieces: bool,
             optimize: bool = True) -> dict[str, np.ndarray]:
    if pieces:
        return run_in_pieces(source, feed, device, optimize)
    session = open_session(str(source), device, optimize=optimize)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, run(session, names, dict(feed)), strict=True))


def _float_grid_outputs(written: Path, feed: Mapping[str, np.ndarray], device: str,
                        runtime: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Outputs of a model with fp4 weights, which ONNX Runtime has no kernel for: on the
    target's ``runtime`` (the fused run) and, in ORT, with the fp4 weights replaced by the
    float values they dequantize to (the plain run)."""
    if _in_pieces(written):
        raise OnnxqError("fp4 weights are checked with the whole model in memory, and this "
                         "one is too large; use --weights int4 --block-size 32 for it")
    target = load_on(written, runtime)
    fused = dict(zip(target.output_names, target.infer(dict(feed)), strict=True))
    model = load_model(written)
    float_grid_weights(model)
    session = open_session(to_proto(model).SerializeToString(), device, optimize=False)
    names = [o.name for o in session.get_outputs()]
    return fused, dict(zip(names, run(session, names, dict(feed)), strict=True))


def check_written(fp32_path: Path, written: Path, feed: Mapping[str, np.ndarray],
                  min_cosine: float, device: str = "cpu", random: bool = False,
                  fp4_runtime: str | None = None) -> float:
    """Raise a one-line error unless ``written`` runs, is finite and has, on ``feed``, a
    cosine to FP32 of at least ``min_cosine`` on every output; return the lowest cosine.
    With a ``random`` feed (no calibration data), a reference that cannot run it skips
    the comparison with a warning.  A model with fp4 weights runs on ``fp4_runtime`` (the
    target's) instead of ORT's optimized graph."""
    try:
        reference = _outputs(fp32_path, feed, device, _in_pieces(fp32_path))
    except OnnxqError:
        if not random:
            raise
        warnings.warn("the written model was not compared with FP32: the model does not run "
                      "on a random sample (no calibration data)", stacklevel=2)
        return float("nan")
    if fp4_runtime is not None:
        fused, plain = _float_grid_outputs(written, feed, device, fp4_runtime)
    else:
        pieces = _in_pieces(written)
        fused = _outputs(written, feed, device, pieces)
        plain = _outputs(written, feed, device, pieces, optimize=False)
    worst = 1.0
    for name, ref in reference.items():
        got = fused[name]
        if got.shape != ref.shape:
            raise OnnxqError(f"the quantized model's output '{name}' has shape "
                             f"{list(got.shape)}, FP32 {list(ref.shape)}; nothing was written")
        if got.dtype.kind != "f":
            continue
        finite = np.isfinite(ref)  # where FP32 itself computes inf/nan, nothing is asked
        if not np.isfinite(got[finite]).all():
            raise OnnxqError(f"the quantized model's output '{name}' holds inf/nan where FP32 "
                             "is finite on a calibration sample; nothing was written")
        agreement = cosine(got[finite], plain[name][finite])
        if agreement < FUSED_FLOOR:
            raise OnnxqError(f"the runtime's optimized graph disagrees with the QDQ model on "
                             f"output '{name}' (cosine {agreement:.3f}): a runtime fusion "
                             "problem; nothing was written (try other --activations)")
        worst = min(worst, cosine(got[finite], ref[finite]))
    if worst < min_cosine:
        raise OnnxqError(f"the quantized model is far from FP32: output cosine {worst:.3f} on "
                         f"a calibration sample, below --min-cosine {min_cosine:g}; nothing was "
                         "written (try --weights int8, --rounding brecq, or --min-cosine -1 to "
                         "keep it)")
    return worst
