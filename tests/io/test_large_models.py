"""Models larger than memory: weights read one at a time from their external data, the
output self-contained, the check of the written model run a piece at a time."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.analysis import output_check
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.mapped import release_pages
from onnxq.io.pieces import cut, run_in_pieces
from onnxq.models import matmul_stack


def _weight_only() -> QuantConfig:
    return QuantConfig(weights="int4", activations="none", block_size=32, precalibrate=True,
                       refine_ranges=False, bias_correction="none")


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """The same small stack saved inline and with external data."""
    folder = tmp_path_factory.mktemp("stacks")
    model = matmul_stack.build(layers=2, hidden=128, ffn=256)
    ir.save(model, folder / "inline.onnx")
    (folder / "external").mkdir()
    ir.save(model, folder / "external" / "stack.onnx", external_data="stack.onnx.data")
    return folder / "inline.onnx", folder / "external" / "stack.onnx"


def _rss_file_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile"))


def test_released_pages_leave_resident_memory(tmp_path):
    array = np.random.default_rng(0).standard_normal((4096, 2048)).astype(np.float32)  # 32 MB
    ir.save(ir.Model(ir.Graph([], [], nodes=[], initializers=[
        ir.Value(name="w", const_value=ir.tensor(array, name="w"))], opset_imports={"": 17}),
        ir_version=9), tmp_path / "w.onnx", external_data="w.onnx.data")
    tensor = ir.load(tmp_path / "w.onnx").graph.initializers["w"].const_value
    assert isinstance(tensor, ir.ExternalTensor)
    before = _rss_file_kb()
    assert float(tensor.numpy().sum()) == pytest.approx(float(array.sum()), rel=1e-4)
    read = _rss_file_kb()
    release_pages(tensor)
    assert read - before > 24_000  # the weight's pages were resident ...
    assert read - _rss_file_kb() > 24_000  # ... and are handed back
    np.testing.assert_array_equal(tensor.numpy(), array)  # and read again from the file


def _initializers(path) -> dict[str, bytes]:
    model = onnx.load(str(path))
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def test_external_data_input_gives_the_same_model_with_its_own_external_data(
        stacks, tmp_path, monkeypatch):
    inline, external = stacks
    quantize(inline, tmp_path / "inline.int4.onnx", None, _weight_only(), quiet=True)
    monkeypatch.setattr(output_check, "WHOLE_BYTES", 0)  # the check runs in pieces
    out = external.parent / "stack.int4.onnx"
    report = quantize(external, out, None, _weight_only(), quiet=True)
    assert report.output_cosine > 0.99
    assert _initializers(out) == _initializers(tmp_path / "inline.int4.onnx")
    moved = tmp_path / "moved"  # its weights, the input's float biases too, in its own file
    moved.mkdir()
    for name in (out.name, f"{out.name}.data"):
        shutil.move(external.parent / name, moved / name)
    locations = {entry.value for t in onnx.load(str(moved / out.name),
                                                load_external_data=False).graph.initializer
                 for entry in t.external_data if entry.key == "location"}
    assert locations == {f"{out.name}.data"}
    feed = matmul_stack.feeds(1, tokens=8, hidden=128)[0]
    np.testing.assert_array_equal(
        ort.InferenceSession(str(moved / out.name)).run(None, feed)[0],
        ort.InferenceSession(str(tmp_path / "inline.int4.onnx")).run(None, feed)[0])


@pytest.mark.parametrize("budget", [1, 10**9])
def test_a_model_run_in_pieces_gives_its_outputs(stacks, tmp_path, budget):
    _, external = stacks
    out = tmp_path / "q.onnx"
    quantize(external, out, None, _weight_only(), quiet=True)
    feed = matmul_stack.feeds(1, tokens=8, hidden=128)[0]
    for path in (external, out):
        whole = ort.InferenceSession(str(path)).run(None, feed)[0]
        graph = onnx.load(str(path), load_external_data=False).graph
        pieces = cut(graph, budget)
        matmuls = [i for i, n in enumerate(graph.node) if n.op_type == "MatMul"]
        apart = len({next(k for k, p in enumerate(pieces) if i in p) for i in matmuls})
        assert apart == (len(matmuls) if budget == 1 else 1)  # one weight per piece, or all
        assert sorted(i for piece in pieces for i in piece) == list(range(len(graph.node)))
        got = run_in_pieces(path, feed, budget=budget)[graph.output[0].name]
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
    piece_of = {graph.node[i].name: k for k, piece in enumerate(pieces) for i in piece}
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert Counter(n.op_type for n in graph.node)["MatMul"] == len(dqs) == 4
    for dq in dqs:  # each weight's DequantizeLinear runs beside its MatMul (ORT fuses them)
        user = next(n for n in graph.node if dq.output[0] in n.input)
        assert piece_of[dq.name] == piece_of[user.name]
