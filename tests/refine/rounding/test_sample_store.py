"""The reconstruction caches: RAM up to a budget, files beyond, same values either way."""

import numpy as np
import pytest
import torch

from onnxq.errors import OnnxqError
from onnxq.refine.rounding.sample_store import SampleStore


def batches(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield {"x": torch.from_numpy(rng.standard_normal((4, 3, 5, 5)).astype(np.float32)),
               "ids": torch.from_numpy(rng.integers(0, 9, (4, 7)))}


def test_spilled_tensors_read_back_exactly_and_stay_within_budget():
    expected = {n: torch.cat([b[n] for b in batches(10)]) for n in ("x", "ids")}
    budget = expected["x"][:8].nbytes + 1  # two batches of x fit, the rest must spill
    store = SampleStore(limit_bytes=budget)
    stored = store.collect(batches(10))
    assert stored["x"].path is not None and stored["x"].path.stat().st_size \
        == expected["x"].nbytes
    assert store.used <= budget
    index = torch.tensor([39, 0, 17, 17, 5])
    for name, tensor in expected.items():
        assert stored[name].shape == tuple(tensor.shape)
        assert torch.equal(stored[name].take(index), tensor[index])
    in_memory = SampleStore().collect(batches(10))
    assert in_memory["x"].tensor is not None and torch.equal(in_memory["x"].take(index),
                                                             expected["x"][index])
    path = stored["x"].path
    del stored
    assert not path.exists() and store.used == 0  # dropped entries free disk and budget
    store.close()


def test_mixed_sample_shapes_are_refused_with_the_tensor_named():
    parts = [{"image": torch.zeros(1, 3, 8, 8)}, {"image": torch.zeros(1, 3, 9, 9)}]
    with pytest.raises(OnnxqError, match="same-shaped samples; 'image'"):
        SampleStore().collect(parts)
    with pytest.raises(OnnxqError, match="calibration data is empty"):
        SampleStore().collect([])


def test_known_row_count_fills_one_buffer_within_budget():
    expected = torch.cat([b["x"] for b in batches(10)])
    store = SampleStore(limit_bytes=expected.nbytes * 3 // 2)
    stored = store.collect(({"x": b["x"]} for b in batches(10)), rows=40)["x"]
    assert stored.tensor is not None and torch.equal(stored.tensor, expected)
    assert store.used == expected.nbytes
    spilled = store.collect(({"x": b["x"]} for b in batches(10)), rows=40)["x"]  # no room
    assert spilled.path is not None and torch.equal(spilled.take(torch.arange(40)), expected)
    store.close()
