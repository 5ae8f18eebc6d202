"""Bit allocation: the exact solver, the scores, the chosen plan as written, the Pareto
front, the Ray path and the command line's refusals."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, invoke
from onnx import TensorProto, helper, numpy_helper

from onnxq.allocate.groups import weight_groups
from onnxq.allocate.importance import (
    ScoreJob,
    candidate_qparams,
    quantized_weights,
    score_chunk,
)
from onnxq.allocate.solve import Budget, solve
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.io.model_io import load_model
from onnxq.models.synthetic import export_mlp, mlp_feeds
from onnxq.plan.annotate import annotate
from onnxq.prepare.stage import prepare

SENSITIVE = 1
"""The MLP layer whose outlier weights a 4-bit grid ruins."""


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return export_mlp(tmp_path_factory.mktemp("mlp") / "mlp.onnx", sensitive=SENSITIVE)


@pytest.fixture(scope="module")
def mlp_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "features.npz"
    np.savez(path, features=np.concatenate([f["features"] for f in mlp_feeds(128)]))
    return path


def _brute_force(scores, costs, limit):
    best = None
    for choice in itertools.product(range(scores.shape[1]), repeat=len(scores)):
        rows = np.arange(len(scores))
        if costs[rows, choice].sum() <= limit and (
                best is None or scores[rows, choice].sum() < best):
            best = scores[rows, choice].sum()
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_solver_is_exact_and_never_over_budget(seed):
    rng = np.random.default_rng(seed)
    groups = 10
    elements = rng.integers(50, 5000, groups)
    costs = np.stack([elements * 8, elements * 4], axis=1) / elements.sum()
    narrow = rng.lognormal(0, 2, groups)
    scores = np.stack([narrow * rng.uniform(0.001, 0.1, groups), narrow], axis=1)
    for limit in (4.0, 4.3, 5.0, 5.5, 6.77, 7.9, 8.0):
        chosen = solve(scores, costs, Budget("avg-weight-bits", limit))
        rows = np.arange(groups)
        assert costs[rows, chosen].sum() <= limit
        assert scores[rows, chosen].sum() == pytest.approx(_brute_force(scores, costs, limit),
                                                           rel=1e-9)


def test_a_budget_on_a_plan_s_exact_cost_is_met_without_going_over():
    costs = np.array([[8 / 3, 4 / 3]] * 3)  # one group at int8: 16/3 bits, not a float
    scores = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])
    limit = float(8 / 3 + 4 / 3 + 4 / 3)
    chosen = solve(scores, costs, Budget("avg-weight-bits", limit))
    assert chosen.tolist() == [1, 1, 0]
    assert costs[np.arange(3), chosen].sum() <= limit


def test_an_infeasible_budget_names_the_smallest_feasible_one():
    costs = np.array([[2.0, 1.0], [4.0, 2.0]])
    with pytest.raises(OnnxqError, match=r"--size-mb 2\.5 cannot be met: the smallest "
                                         r"feasible budget is 3"):
        solve(np.ones((2, 2)), costs, Budget("size-mb", 2.5))


def _linear(path, rng):
    """y = x @ W with a 3-D output (so the output loss is plain squared error)."""
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 32])],
        [numpy_helper.from_array(weight, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return weight


def test_fisher_scores_estimate_the_output_error_a_width_causes(tmp_path):
    rng = np.random.default_rng(0)
    weight = _linear(tmp_path / "linear.onnx", rng)
    model = load_model(tmp_path / "linear.onnx")
    config = QuantConfig(avg_weight_bits=6)
    prepare(model, config)
    plan = annotate(model, config)
    groups = weight_groups(model, plan)
    types = ("int8", "int4")
    quantized = quantized_weights(model, candidate_qparams(model, plan, groups, types))
    feeds = [{"x": rng.standard_normal((1, 1, 64)).astype(np.float32)} for _ in range(512)]
    job = ScoreJob.of(model, plan, groups, quantized, 64, "cpu", 0)
    sums, samples = score_chunk(job, feeds, 0)
    x = np.concatenate([f["x"][:, 0] for f in feeds]).astype(np.float64)
    for col, qtype in enumerate(types):
        delta = quantized[qtype]["W"].astype(np.float64) - weight
        true = float(np.mean(np.sum((x @ delta) ** 2, axis=1)))
        assert samples == 512
        assert sums[0, col, 0] / samples == pytest.approx(true, rel=0.15)  # fisher
        assert sums[0, col, 1] / samples == pytest.approx(true, rel=0.15)  # its diagonal
    assert sums[0, 1, 0] > 50 * sums[0, 0, 0]  # int4 harms far more than int8


def _stored_bits(path):
    """Average bits per stored weight integer (DequantizeLinear inputs that are not int32)."""
    model = onnx.load(path)
    init = {t.name: t for t in model.graph.initializer}
    bits = elements = 0
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in init:
            tensor = init[node.input[0]]
            width = {TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT4: 4,
                     TensorProto.UINT4: 4}.get(tensor.data_type)
            if width is not None:
                count = int(np.prod(tensor.dims))
                bits, elements = bits + width * count, elements + count
    return bits / elements


def _layer_weight(layer):
    return f"{2 * layer}.weight"


@pytest.mark.parametrize("importance", ["fisher", "fisher-diag", "weight"])
def test_the_sensitive_layer_gets_8_bits_and_the_rest_4(mlp, tmp_path, importance):
    out = tmp_path / "q.onnx"
    report = quantize(mlp, out, mlp_feeds(128), QuantConfig(
        avg_weight_bits=5, importance=importance, int4_storage="packed"), quiet=True)
    layers = report.allocation["layers"]
    assert layers == {_layer_weight(i): "int8" if i == SENSITIVE else "int4"
                      for i in range(5)}
    assert report.allocation["avg_weight_bits"] <= 5
    assert _stored_bits(out) == pytest.approx(report.allocation["avg_weight_bits"], abs=1e-3)


def test_cli_allocation_fits_the_budget_and_writes_a_measured_front(mlp, mlp_npz, tmp_path):
    out, front = tmp_path / "q.onnx", tmp_path / "front.json"
    result = invoke("quantize", mlp, "--calib", mlp_npz, "--avg-weight-bits", 5,
                    "--int4-storage", "packed", "--pareto", front, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "bit allocation (fisher): 1 int8, 4 int4 weight groups" in result.output
    assert _stored_bits(out) <= 5
    data = json.loads(front.read_text())
    ours = [p for p in data["points"] if p["kind"] == "onnxq"]
    assert len(ours) >= 8 and front.with_suffix(".png").stat().st_size > 10_000
    assert sum(p["chosen"] for p in data["points"]) == 1
    uniform = {p["kind"]: p for p in data["points"] if p["kind"] != "onnxq"}
    assert uniform["uniform int8"]["avg_weight_bits"] == 8
    assert uniform["uniform int4"]["avg_weight_bits"] == 4
    chosen = next(p for p in ours if p["chosen"])
    # 8 bits on the one sensitive layer of five removes most of uniform int4's harm
    assert chosen["sqnr_db"] > uniform["uniform int4"]["sqnr_db"] + 4
    assert chosen["kl"] < uniform["uniform int4"]["kl"] / 3
    for low, high in itertools.pairwise(sorted(ours, key=lambda p: p["avg_weight_bits"])):
        assert high["predicted"] <= low["predicted"]
    inspected = invoke("inspect", out)
    assert "weight widths: int4 4, int8 1" in inspected.output, inspected.output
    assert "bit allocation (fisher, --avg-weight-bits 5)" in inspected.output


def test_an_int8_container_plan_marks_its_4_bit_layers_in_inspect(mlp, mlp_npz, tmp_path):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", mlp, "--calib", mlp_npz, "--avg-weight-bits", 5,
                    "--int4-storage", "int8", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    inspected = invoke("inspect", out).output
    assert "weight widths: int4 (int8 container) 4, int8 1" in inspected, inspected


def test_calib_none_ranks_by_the_weight_error(mlp, tmp_path):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", mlp, "--calib", "none", "--size-mb", 0.012, "-o", out,
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert "bit allocation (weight): 1 int8, 4 int4" in result.output


@pytest.mark.parametrize(("flags", "needles"), [
    (["--avg-weight-bits", 5, "--size-mb", 1], ["two budgets"]),
    (["--avg-weight-bits", 3], ["--avg-weight-bits 3 cannot be met", "is 4"]),
    (["--avg-weight-bits", 5, "--target", "openvino-cpu"], ["runs only int8"]),
    (["--pareto", "front.json"], ["--pareto", "add --avg-weight-bits or --size-mb"]),
    (["--avg-weight-bits", 5, "--tie", "("], ["no regular expression"]),
    (["--avg-weight-bits", 5, "--tie", "nothing-like-this"], ["matches no quantized weight"]),
    (["--avg-weight-bits", 0], ["must be above 0"]),
    (["--tie", "weight"], ["under a budget"]),
    (["--ray", "local"], ["--ray runs bit allocation's jobs"]),
])
def test_bad_budgets_get_one_error_line(mlp, mlp_npz, tmp_path, flags, needles):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", mlp, "--calib", mlp_npz, "-o", out, *flags)
    assert_one_line_error(result, *needles)
    assert not out.exists()


@pytest.mark.parametrize(("flags", "needles"), [
    (["--importance", "fisher"], ["--importance weight"]),
    (["--pareto", "front.json"], ["--pareto", "give --calib"]),
])
def test_data_aware_options_without_data_are_refused(mlp, tmp_path, flags, needles):
    result = invoke("quantize", mlp, "--calib", "none", "--avg-weight-bits", 5, *flags,
                    "-o", tmp_path / "q.onnx")
    assert_one_line_error(result, *needles)


def test_ray_runs_the_same_jobs_to_the_same_plan_and_front(mlp, tmp_path):
    ray = pytest.importorskip("ray")
    config = QuantConfig(avg_weight_bits=5, score_samples=48)
    local = quantize(mlp, tmp_path / "a.onnx", mlp_feeds(96), config, quiet=True,
                     pareto_out=tmp_path / "a.json")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = quantize(mlp, tmp_path / "b.onnx", mlp_feeds(96), config, quiet=True,
                          pareto_out=tmp_path / "b.json", ray="local")
    finally:
        ray.shutdown()
    assert remote.allocation["layers"] == local.allocation["layers"]
    assert remote.allocation["predicted"] == local.allocation["predicted"]
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads(
        (tmp_path / "a.json").read_text())
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


def test_tied_weights_take_one_width(mlp, tmp_path):
    report = quantize(mlp, tmp_path / "q.onnx", mlp_feeds(64), QuantConfig(
        avg_weight_bits=5, tie=(rf"^{2 * SENSITIVE}\.|^{2 * SENSITIVE + 2}\.",)), quiet=True)
    layers = report.allocation["layers"]
    tied = (_layer_weight(SENSITIVE), _layer_weight(SENSITIVE + 1))
    assert layers[tied[0]] == layers[tied[1]]
    assert report.allocation["int8_groups"] + report.allocation["int4_groups"] == 4


def test_an_unreachable_ray_cluster_is_one_error_line_at_once(mlp, mlp_npz, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "q.onnx"
    result = invoke("quantize", mlp, "--calib", mlp_npz, "--avg-weight-bits", 5, "--ray",
                    "127.0.0.1:1", "-o", out)
    assert_one_line_error(result, "cannot reach a Ray cluster at '127.0.0.1:1'")
    assert not out.exists()
