"""Calibration streamed through ONNX Runtime: observers are updated batch by batch.

The float model is augmented with the planned activations as extra outputs;
each batch's outputs go straight into the observers and are then dropped, so
memory does not grow with the number of samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx_ir as ir

from onnxq.errors import OnnxqError
from onnxq.graph import FreshNames, expose, model_values, subgraph_owners, values_by_name
from onnxq.io.data import Feed, InputSpec, check_feed, model_inputs
from onnxq.io.runtime import make_session, run
from onnxq.numerics.observers import ChannelMeanObserver, MinMaxObserver, make_observer
from onnxq.progress import Progress
from onnxq.spec import QuantPlan


def batches(feeds: Iterable[Feed], inputs: Sequence[InputSpec], size: int) -> Iterator[Feed]:
    """Concatenate consecutive same-shaped samples along a dynamic batch dim."""
    batchable = size > 1 and all(spec.shape and spec.shape[0] is None for spec in inputs)
    pending: list[Feed] = []
    for index, feed in enumerate(feeds):
        check_feed(feed, inputs, index)
        if not batchable:
            yield feed
            continue
        if pending and any(pending[0][k].shape != feed[k].shape for k in feed):
            yield {k: np.concatenate([f[k] for f in pending]) for k in feed}
            pending = []
        pending.append(feed)
        if len(pending) == size:
            yield {k: np.concatenate([f[k] for f in pending]) for k in feed}
            pending = []
    if pending:
        yield {k: np.concatenate([f[k] for f in pending]) for k in pending[0]}


def _session_with_outputs(model: ir.Model, names: Sequence[str], device: str
                          ) -> tuple[object, dict[str, tuple[str, int]]]:
    """An ORT session on ``model`` that also returns the tensors ``names``, and for each the
    session output that holds it with the number of stacked leading dims to merge (values
    inside Loop/Scan bodies come out stacked over iterations)."""
    names = list(dict.fromkeys(names))
    main = values_by_name(model.graph)
    if all(name in main for name in names):
        existing = {v.name for v in model.graph.outputs}
        added = [main[name] for name in names if name not in existing]
        model.graph.outputs.extend(added)
        try:
            return make_session(model, device), {name: (name, 0) for name in names}
        finally:
            for _ in added:
                model.graph.outputs.pop()
    copy = model.clone()  # subgraph values are threaded out of their bodies on a copy
    values, fresh, owners = model_values(copy), FreshNames(copy), subgraph_owners(copy)
    where = {}
    for name in names:
        value, stacked = ((values[name], 0) if name in main
                          else expose(copy, values[name], fresh, owners))
        if value not in copy.graph.outputs:
            copy.graph.outputs.append(value)
        where[name] = (value.name, stacked)
    return make_session(copy, device), where


def _merge(array: np.ndarray, stacked: int) -> np.ndarray:
    """Fold ``stacked`` leading iteration dims into the batch dim."""
    return array if not stacked else array.reshape(-1, *array.shape[stacked + 1:])


def stream_outputs(model: ir.Model, names: Sequence[str], data: Iterable[Feed], *,
                   device: str = "cpu", batch_size: int = 8, progress: Progress | None = None,
                   total: int | None = None, stage: str = "calibrate"
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Run ``data`` through ``model`` batch by batch, yielding the tensors ``names`` of each."""
    if not names:
        raise ValueError("stream_outputs needs at least one tensor name")
    progress = progress or Progress(quiet=True)
    session, where = _session_with_outputs(model, names, device)
    outputs = [where[name][0] for name in names]
    inputs = model_inputs(model)
    count = 0
    for feed in progress(batches(data, inputs, batch_size), stage,
                         total=None if total is None else -(-total // max(batch_size, 1))):
        # no local keeps this batch's tensors alive while the next batch runs
        yield {name: _merge(array, where[name][1])
               for name, array in zip(names, run(session, outputs, feed), strict=True)}
        count += 1
    if count == 0:
        raise OnnxqError("calibration data is empty; pass --calib with at least one sample")


def collect_outputs(model: ir.Model, names: Sequence[str], data: Iterable[Feed],
                    window: Callable[[str, np.ndarray], np.ndarray] | None = None, **kwargs
                    ) -> dict[str, list[np.ndarray]]:
    """The tensors ``names`` for every sample of ``data``, one array per batch of
    same-shaped samples (never concatenated across shapes; memory grows with the samples:
    for bounded subsets), each cut by ``window(name, array)`` as it arrives when given."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for outputs in stream_outputs(model, names, data, **kwargs):
        for name, array in outputs.items():
            if array.size:  # an If branch that was not taken gives an empty tensor
                parts[name].append(array if window is None else window(name, array))
    return parts


def channel_means(model: ir.Model, names: Sequence[str], data: Iterable[Feed], **kwargs
                  ) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) means of the tensors ``names`` over ``data`` (streamed)."""
    means = {name: ChannelMeanObserver() for name in names}
    for outputs in stream_outputs(model, names, data, **kwargs):
        for name, array in outputs.items():
            means[name].update(array)
    return {name: m.mean for name, m in means.items()}


def calibrate(model: ir.Model, plan: QuantPlan, data: Iterable[Feed], *, device: str = "cpu",
              batch_size: int = 8, progress: Progress | None = None, total: int | None = None
              ) -> dict[str, MinMaxObserver]:
    """Run ``data`` through ``model`` once; return one fed range observer per qparam group."""
    groups = plan.groups()
    observers = {root: make_observer(plan.activations[root].observer) for root in groups}
    names = [n for members in groups.values() for n in members]
    if not names:
        return observers
    for outputs in stream_outputs(model, names, data, device=device, batch_size=batch_size,
                                  progress=progress, total=total):
        for name, array in outputs.items():
            observers[plan.group(name)].update(array)
    skipped = {root: o.nonfinite for root, o in observers.items() if o.nonfinite}
    if skipped:
        worst = sorted(skipped.items(), key=lambda item: -item[1])[:3]
        warnings.warn(f"the model computes inf/nan on the calibration data: "
                      f"{sum(skipped.values())} non-finite values in {len(skipped)} tensors "
                      f"were left out of their ranges (most in "
                      f"{', '.join(f'{n} ({c})' for n, c in worst)})", stacklevel=2)
    return observers
