"""Block-wise int4 MatMul/Gemm weights (``--block-size``): ORT CPU fuses them into
MatMulNBits, the head stays int8, the error is below per-channel int4's, and the flags
blocks do not work with are refused."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.io.runtime import make_session, optimized_op_types
from onnxq.models import tiny_bert
from onnxq.numerics.affine import from_groups, groups
from onnxq.prepare.untranspose_gemm_weights import UntransposeGemmWeightsPass


def _weight_only(block_size=None, weights="int4", **flags) -> QuantConfig:
    return QuantConfig.from_preset("fast", weights=weights, activations="none",
                                   bias_correction="none", block_size=block_size, **flags)


@pytest.fixture(scope="module")
def val():
    return tiny_bert.feeds("val", 32, 1)


def _sqnr(fp32, path, feeds) -> float:
    return compare(load_model(fp32), load_model(path), feeds).outputs[0].sqnr_db


@pytest.mark.parametrize("block", [32, 128])
def test_every_weight_matmul_runs_as_matmulnbits(bert17, tmp_path, block):
    out = tmp_path / "b.onnx"
    quantize(bert17, out, None, _weight_only(block), quiet=True)
    model = ir.load(out)
    weights = [n for n in model.graph if n.op_type in ("MatMul", "Gemm")
               and n.inputs[1].producer() is not None
               and n.inputs[1].producer().op_type == "DequantizeLinear"]
    blocked = [n for n in weights if n.inputs[1].producer().attributes.get_int("block_size", 0)]
    assert len(blocked) == len(weights) - 1  # the head is int8 per channel
    for node in blocked:
        dq = node.inputs[1].producer()
        k, n = node.inputs[1].shape
        assert dq.attributes.get_int("axis", None) == 0
        assert dq.inputs[0].dtype == ir.DataType.INT4
        assert dq.inputs[1].const_value.shape == (-(-k // block), n)
    assert Counter(optimized_op_types(out))["MatMulNBits"] == len(weights)
    report = json.loads(model.metadata_props["onnxq.report"])
    assert report["matmulnbits"] == {"fused": len(weights), "weights": len(weights),
                                     "not_fused": {}}


def test_blocks_beat_per_channel_and_precalibration_keeps_blocks(bert17, tmp_path, val):
    same = {"exclude": ("Gather", "/head/Gemm")}  # the same weights at both granularities
    paths = {}
    for name, config in (("channel", _weight_only(**same)), ("blocks", _weight_only(32, **same)),
                         ("precalibrated", _weight_only(32, precalibrate=True))):
        paths[name] = tmp_path / f"{name}.onnx"
        quantize(bert17, paths[name], None, config, quiet=True)
    sqnr = {name: _sqnr(bert17, path, val) for name, path in paths.items()}
    assert sqnr["blocks"] > sqnr["channel"] + 0.5, sqnr
    assert sqnr["precalibrated"] > 25, sqnr  # int4 blocks, int8 tables and head
    model = ir.load(paths["precalibrated"])
    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear"
              and n.attributes.get_int("block_size", 0))
    k, n = dq.inputs[0].shape
    assert dq.inputs[1].const_value.shape == (k // 32, n)


def test_quantized_activations_are_reported_as_not_fused(bert17, tmp_path):
    out = tmp_path / "w4a8.onnx"
    quantize(bert17, out, tiny_bert.feeds("calib", 16), QuantConfig(weights="int4",
                                                                   block_size=32), quiet=True)
    summary = json.loads(ir.load(out).metadata_props["onnxq.report"])["matmulnbits"]
    assert summary["fused"] == 0 == Counter(optimized_op_types(out))["MatMulNBits"]
    assert all("input is quantized" in why for why in summary["not_fused"].values())
    shown = invoke("inspect", out).output
    assert "ORT CPU fuses 0 of" in shown and "input is quantized" in shown


def test_untransposing_gemm_weights_is_exact(bert17, val):
    model = ir.load(bert17)
    before = make_session(model).run(None, val[0])[0]
    assert UntransposeGemmWeightsPass()(model).modified
    assert not any(n.attributes.get_int("transB", 0) for n in model.graph if n.op_type == "Gemm")
    np.testing.assert_allclose(make_session(model).run(None, val[0])[0], before, atol=1e-6)


@pytest.mark.parametrize(("shape", "axis", "block"), [
    ((5, 7), None, None), ((5, 7), 1, None), ((70, 9), 0, 32), ((3, 40, 5), 1, 16)])
def test_groups_and_back(shape, axis, block):
    w = np.random.default_rng(0).standard_normal(shape)
    rows, _ = groups(w, axis, block)
    assert np.array_equal(from_groups(rows, shape, axis, block), w)


def test_an_override_blocks_one_matmul(bert17, tmp_path):
    model = ir.load(bert17)
    name = next(n.name for n in model.graph if n.op_type == "MatMul"
                and n.inputs[1].const_value is not None)
    rules = tmp_path / "o.toml"
    rules.write_text(f'[[override]]\nnode = "{name}"\nweights = "int4"\n'
                     'granularity = "per-block"\n')
    out = tmp_path / "o.onnx"
    result = invoke("quantize", bert17, "--calib", "none", "-o", out, "--overrides", rules,
                    "--quiet")
    assert result.exit_code == 0, result.output
    blocks = {n.name: n.inputs[1].producer().attributes.get_int("block_size", 0)
              for n in ir.load(out).graph if n.op_type in ("MatMul", "Gemm")
              and n.inputs[1].producer() is not None
              and n.inputs[1].producer().op_type == "DequantizeLinear"}
    assert blocks[name] == 32 and sum(blocks.values()) == 32


@pytest.mark.parametrize(("flags", "needle"), [
    (("--block-size", "24", "--weights", "int4"), "power of two of at least 16"),
    (("--block-size", "8", "--weights", "int4"), "power of two of at least 16"),
    (("--block-size", "32"), "add --weights int4"),
    (("--weights", "uint4"), "add --block-size 32"),
    (("--weights", "uint4", "--block-size", "32", "--target", "qnn-htp"),
     "does not run uint4 weights"),
    (("--block-size", "32", "--weights", "int4", "--target", "qnn-htp"),
     "does not run blocked weights"),
])
def test_block_flags_that_cannot_work_are_refused(bert17, tmp_path, flags, needle):
    out = tmp_path / "q.onnx"
    assert_one_line_error(invoke("quantize", bert17, "--calib", "none", "-o", out, *flags),
                          needle)
    assert not out.exists()


def test_learned_rounding_and_budgets_refuse_blocks():
    from onnxq.errors import OnnxqError

    with pytest.raises(OnnxqError, match="learned rounding does not handle blocked weights"):
        QuantConfig(weights="int4", block_size=32, rounding="brecq")
    with pytest.raises(OnnxqError, match="bit allocation chooses per-channel widths"):
        QuantConfig(weights="int4", block_size=32, avg_weight_bits=5)


@pytest.mark.parametrize("rank", [2, 3])
def test_the_fusion_status_matches_what_ort_fuses(tmp_path, rank):
    from onnxq.analysis.matmulnbits import matmulnbits_fusion
    from onnxq.models import matmul_stack

    fp32 = tmp_path / "stack.onnx"
    ir.save(matmul_stack.build(layers=2, hidden=64, ffn=128, rank=rank), fp32)
    out = tmp_path / "b.onnx"
    quantize(fp32, out, None, _weight_only(32), quiet=True)
    status = matmulnbits_fusion(ir.load(out))
    assert len(status) == 4
    fused = sum(reason is None for reason in status.values())
    assert fused == Counter(optimized_op_types(out))["MatMulNBits"]
    assert fused == (4 if rank == 3 else 0)  # the int8 head (per channel) fuses too
    if rank == 2:
        assert {"ORT fuses the Gemm with its Relu (FusedGemm) first",
                "ORT turns a 2-D MatMul and its Add into a Gemm first (3-D inputs are fused)"
                } == set(status.values())


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    from onnxq.models import matmul_stack

    path = matmul_stack.export(tmp_path_factory.mktemp("stack") / "stack.onnx", layers=2,
                               hidden=256, ffn=1024)
    return path, matmul_stack.feeds(4, tokens=32, hidden=256, seed=1)


def test_uint4_blocks_carry_zero_points_fuse_and_beat_int4(small_stack, tmp_path):
    fp32, feeds = small_stack
    sqnr = {}
    for weights in ("int4", "uint4"):
        for precalibrate in (False, True):
            out = tmp_path / f"{weights}{precalibrate}.onnx"
            quantize(fp32, out, None, _weight_only(32, weights, precalibrate=precalibrate),
                     quiet=True)
            sqnr[weights, precalibrate] = _sqnr(fp32, out, feeds)
    assert Counter(optimized_op_types(out))["MatMulNBits"] == 4
    dq = next(n for n in ir.load(out).graph if n.op_type == "DequantizeLinear"
              and n.attributes.get_int("block_size", 0))
    k, n = dq.inputs[0].shape
    assert dq.inputs[0].dtype == dq.inputs[2].dtype == ir.DataType.UINT4
    assert dq.inputs[2].const_value.shape == (k // 32, n)
    assert len(np.unique(dq.inputs[2].const_value.numpy())) > 1  # fitted, not centred
    assert sqnr["uint4", False] > sqnr["int4", False] + 0.5, sqnr
    for weights in ("int4", "uint4"):  # mean-preserving rounding in each block helps
        assert sqnr[weights, True] > sqnr[weights, False] + 0.2, sqnr


def test_fitted_block_zero_points_round_better_than_min_max():
    from onnxq.numerics.affine import (
        QTYPES,
        affine_block_qparams,
        channel_ranges,
        choose_qparams,
        fake_quantize,
    )

    grid = QTYPES["uint4"]
    w = np.random.default_rng(0).standard_normal((256, 48)).astype(np.float32)

    def errors(scale, zero):
        return ((fake_quantize(w, scale, zero, grid, 0, 32) - w) ** 2).reshape(8, 32, 48).sum(1)

    before = errors(*choose_qparams(*channel_ranges(w, 0, 32), grid, symmetric=False))
    after = errors(*affine_block_qparams(w, 0, 32, grid))
    assert np.all(after <= before * (1 + 1e-6))
    assert after.sum() < 0.95 * before.sum()  # about 0.3 dB


def test_mean_preserving_rounding_keeps_block_sums_with_zero_points():
    from onnxq.numerics.affine import QTYPES, mean_preserving_round

    grid = QTYPES["uint4"]
    rows = np.random.default_rng(1).standard_normal((64, 32))
    scale = (rows.max(axis=1) - rows.min(axis=1)) / 15
    zero = np.clip(np.round(-rows.min(axis=1) / scale), 0, 15).astype(np.int64)
    q = mean_preserving_round(rows, scale, zero, grid)
    assert q.min() >= 0 and q.max() <= 15
    residual = ((q - zero[:, None]) * scale[:, None] - rows).sum(axis=1) / scale
    assert np.all(np.abs(residual) <= 0.5 + 1e-9)
