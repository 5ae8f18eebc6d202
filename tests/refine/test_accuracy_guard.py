"""Sigmoid/SiLU placement, range refinement through SiLU, and the --min-sqnr guard."""

from __future__ import annotations

import collections

import onnx
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.runtime import optimized_op_types
from onnxq.models import suite, synthetic
from onnxq.refine.guard import output_sqnr


@pytest.fixture(scope="module")
def silu(tmp_path_factory):
    path = synthetic.export_silu_cnn(tmp_path_factory.mktemp("silu") / "silu.onnx")
    val = synthetic.image_feeds(16, 2)
    return path, synthetic.image_feeds(24, 1), val, suite.outputs(path, val)


def run(silu, tmp_path, **options):
    path, calib, val, reference = silu
    out = tmp_path / "q.onnx"
    report = quantize(path, out, calib, QuantConfig(samples=24, bias_correction="none",
                                                    **options), quiet=True)
    return out, report, output_sqnr(reference, suite.outputs(out, val))


def test_silu_convs_fuse_to_integer_kernels(silu, tmp_path):
    out, _, _ = run(silu, tmp_path, refine_ranges=False)
    ops = collections.Counter(optimized_op_types(out))
    assert ops["QLinearConv"] == 3 and ops["Conv"] == 0, ops
    assert ops["QLinearSigmoid"] == 2 and ops["QLinearMul"] == 2, ops


def silu_input_range(path) -> tuple[float, float]:
    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    scale = float(init["/body/Conv_output_0_scale"])
    zero_point = int(init["/body/Conv_output_0_zero_point"])
    return -zero_point * scale, (255 - zero_point) * scale


def test_refinement_clips_the_silu_inputs_negative_tail(silu, tmp_path):
    out, _, plain = run(silu, tmp_path, refine_ranges=False)
    observed = silu_input_range(out)
    out, _, refined = run(silu, tmp_path)
    assert refined > plain + 8, (plain, refined)  # measured 42.7 -> 57.6 dB
    lo, hi = silu_input_range(out)
    assert lo > observed[0] / 3, (observed, (lo, hi))
    # SiLU is linear above: the high end stays where it was seen (up to the zero point's rounding)
    assert hi == pytest.approx(observed[1], rel=0.02), (observed, (lo, hi))


def test_guard_promotes_the_fewest_groups_that_reach_the_target(silu, tmp_path):
    _, none, base = run(silu, tmp_path, min_sqnr=40)
    assert none.promoted == [] and none.guard_sqnr_db[0] >= 40
    out, report, reached = run(silu, tmp_path, min_sqnr=62)
    before, after = report.guard_sqnr_db
    assert before < 62 <= after, report.guard_sqnr_db
    assert [p["tensor"] for p in report.promoted] == ["/body/Conv_output_0"]
    assert reached > base + 2, (base, reached)
    types = {t.name: t.data_type for t in onnx.load(out).graph.initializer}
    assert types["/body/Conv_output_0_zero_point"] == onnx.TensorProto.UINT16
    assert types["/Mul_1_output_0_zero_point"] == onnx.TensorProto.UINT8


def test_guard_says_when_the_target_cannot_be_reached(silu, tmp_path):
    with pytest.warns(UserWarning, match="not reached"):
        _, report, _ = run(silu, tmp_path, min_sqnr=110)
    assert len(report.promoted) == 8 and report.guard_sqnr_db[1] > report.guard_sqnr_db[0]


def test_guard_is_deterministic(silu, tmp_path):
    first, _, _ = run(silu, tmp_path, min_sqnr=62)
    data = first.read_bytes()
    again, _, _ = run(silu, tmp_path, min_sqnr=62)
    assert again.read_bytes() == data


def test_cli_min_sqnr(silu, tmp_path):
    path, calib, _, _ = silu
    folder = suite.write_npz_folder(calib, tmp_path / "calib")
    result = invoke("quantize", path, "--calib", folder, "--samples", "24",
                    "--bias-correction", "none", "--min-sqnr", "62", "-o",
                    tmp_path / "q.onnx")
    assert result.exit_code == 0, result.output
    assert "1 activation group(s) moved to 16 bits" in result.output


@pytest.mark.parametrize("value", ["0", "-3", "500"])
def test_cli_refuses_a_bad_min_sqnr(silu, tmp_path, value):
    result = invoke("quantize", silu[0], "--calib", "random", "--min-sqnr", value,
                    "-o", tmp_path / "q.onnx")
    assert_one_line_error(result, "--min-sqnr")


def test_cli_refuses_min_sqnr_without_calibration_data(silu, tmp_path):
    result = invoke("quantize", silu[0], "--calib", "none", "--min-sqnr", "30",
                    "-o", tmp_path / "q.onnx")
    assert_one_line_error(result, "--min-sqnr", "--calib none")
    assert not (tmp_path / "q.onnx").exists()
