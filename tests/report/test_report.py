"""``onnxq report``: per-layer figures checked against direct measurements, the culprit
finder on a planted outlier, the files it writes and its errors."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import onnx_ir as ir
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.model_io import load_model
from onnxq.models import synthetic
from onnxq.plan.overrides import parse_overrides
from onnxq.report.build import build_report, overrides_text
from onnxq.report.render import render_html
from onnxq.targets.profile import load_target

OUTLIER = 3
"""The conv whose input holds the 100x channel (the fourth of six)."""


def _stack(feeds):
    return {"image": np.concatenate([f["image"] for f in feeds])}


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """The six-conv model, its W8A8 quantization (per-tensor activations), and data."""
    folder = tmp_path_factory.mktemp("outlier")
    fp32 = synthetic.export_outlier_cnn(folder / "six.onnx", outlier=OUTLIER)
    calib, held_out = synthetic.image_feeds(64, 1), synthetic.image_feeds(64, 2)
    quantized = folder / "six.q.onnx"
    quantize(fp32, quantized, calib, QuantConfig(), quiet=True)
    np.savez(folder / "val.npz", **_stack(held_out))
    return fp32, quantized, calib, held_out, folder


def _output_sqnr(fp32, quantized, feeds) -> float:
    return compare(load_model(fp32), load_model(quantized), feeds).outputs[0].sqnr_db


def test_the_outlier_conv_ranks_first_and_its_override_gains_10_db(outlier, tmp_path):
    fp32, quantized, calib, held_out, _ = outlier
    report = build_report(load_model(fp32), load_model(quantized), held_out)
    convs = [row["node"] for row in report["rows"] if row["op"] == "Conv"]
    worst = report["culprits"][0]
    assert worst["node"] == convs[OUTLIER]
    others = [c["only_layer_sqnr_db"] for c in report["culprits"][1:]]
    assert all(worst["only_layer_sqnr_db"] + 10 < other for other in others)
    assert worst["suggestion"].endswith("activations = 'uint16'")
    rules = parse_overrides(overrides_text(report["culprits"][:1], "six.q.onnx"), "o.toml")
    fixed = tmp_path / "fixed.onnx"
    quantize(fp32, fixed, calib, QuantConfig(overrides=rules), quiet=True)
    before, after = _output_sqnr(fp32, quantized, held_out), _output_sqnr(fp32, fixed, held_out)
    assert after >= before + 10, (before, after)
    assert report["output_sqnr_db"] == pytest.approx(before, abs=0.05)


def test_with_one_layer_quantized_its_only_layer_sqnr_is_the_output_sqnr(outlier, tmp_path):
    fp32, _, calib, held_out, _ = outlier
    model = load_model(fp32)
    convs = [n.name for n in model.graph if n.op_type == "Conv"]
    one = tmp_path / "one.onnx"
    exclude = tuple(name for name in convs if name != convs[2])
    alone = dataclasses.replace(load_target(), quantize_outputs=())  # no Q after the conv
    quantize(fp32, one, calib, QuantConfig(exclude=exclude, bias_correction="none",
                                           target=alone), quiet=True)
    report = build_report(load_model(fp32), load_model(one), held_out, batch_size=4)
    (row,) = report["rows"]
    assert row["node"] == convs[2]
    without = build_report(load_model(fp32), load_model(one), held_out, batches=1,
                           leave_one_out=True)["rows"][0]
    assert without["float_gain_db"] is None  # nothing else quantized: exact, gain unbounded
    assert row["only_layer_sqnr_db"] == pytest.approx(report["output_sqnr_db"], abs=0.01)
    assert row["only_layer_sqnr_db"] == pytest.approx(
        _output_sqnr(fp32, one, held_out[:32]), abs=0.05)
    assert report["batches"] == 8 and report["samples"] == 32
    fixes = sum(len(c["fixes"]) for c in report["culprits"])
    assert report["cost"]["model_runs"] == 8 * (2 + 1 + fixes)


def test_the_rows_hold_measured_figures(outlier):
    fp32, quantized, _, held_out, _ = outlier
    report = build_report(load_model(fp32), load_model(quantized), held_out)
    rows = report["rows"]
    assert [row["op"] for row in rows] == ["Conv"] * 6
    for row in rows:
        weight = next(e for e in row["inputs"] if e["kind"] == "weight")
        assert weight["qtype"] == "int8" and weight["granularity"] == "per-channel axis 0"
        assert 35 < row["weight_sqnr_db"] < 60  # int8 per channel: about 6 dB a bit
        act = next(e for e in row["inputs"] if e["kind"] == "activation")
        low, high = act["range"]
        assert low == pytest.approx((0 - act["zero_point"]) * act["scale"], rel=1e-5)
        assert high == pytest.approx((255 - act["zero_point"]) * act["scale"], rel=1e-5)
        assert sum(act["histogram"]["counts"]) + sum(act["histogram"]["outside"]) == (
            64 * np.prod(_shape_of(quantized, act["tensor"])))
    # accumulated error grows along the chain until the planted outlier hurts it most
    accumulated = [row["accumulated_sqnr_db"] for row in rows]
    assert min(accumulated[:OUTLIER + 1]) == accumulated[OUTLIER]
    assert rows[-1]["accumulated_sqnr_db"] == pytest.approx(report["output_sqnr_db"], abs=0.01)
    # the planted input is the worst activation: its other channels sit on few levels
    local = [row["local_sqnr_db"] for row in rows[1:]]
    assert min(local) == rows[OUTLIER]["local_sqnr_db"]
    assert all(row["float_gain_db"] is None for row in rows)  # not asked for


def test_leaving_the_outlier_conv_float_gains_most(outlier):
    fp32, quantized, _, held_out, _ = outlier
    report = build_report(load_model(fp32), load_model(quantized), held_out, batches=4,
                          leave_one_out=True)
    gains = [row["float_gain_db"] for row in report["rows"]]
    assert max(gains) == gains[OUTLIER] and gains[OUTLIER] > 10
    assert report["cost"]["model_runs"] == 4 * (2 + 2 * 6 + sum(
        len(c["fixes"]) for c in report["culprits"]))


def _shape_of(path, name):
    model = ir.load(path)
    value = next(v for n in model.graph for v in [*n.inputs, *n.outputs]
                 if v is not None and v.name == name)
    return tuple(value.shape)[1:]


def test_the_html_opens_offline_and_sorts(outlier):
    fp32, quantized, _, held_out, _ = outlier
    report = build_report(load_model(fp32), load_model(quantized), held_out)
    page = render_html(report, overrides_text(report["culprits"], "q"))
    assert page.count("data:image/png;base64,") == 2  # SQNR along depth, histograms
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "table.sortable" in page and report["culprits"][0]["node"] in page
    json.loads(json.dumps(report))  # JSON-ready


def test_a_pareto_front_is_plotted_in_the_page(outlier):
    fp32, quantized, _, held_out, _ = outlier
    report = build_report(load_model(fp32), load_model(quantized), held_out, batches=1)
    points = [{"kind": "onnxq", "avg_weight_bits": bits, "size_mb": bits / 8, "kl": None,
               "sqnr_db": 10.0 + bits, "chosen": bits == 6} for bits in (4, 6, 8)]
    front = {"budget": {"kind": "avg-weight-bits", "value": 6}, "importance": "fisher",
             "samples": 32, "points": points}
    page = render_html(report, "", front)
    assert page.count("data:image/png;base64,") == 3 and "Pareto front" in page


def test_the_command_writes_report_json_and_overrides(outlier, tmp_path):
    fp32, quantized, _, _, folder = outlier
    html, data = tmp_path / "r.html", tmp_path / "r.json"
    result = invoke("report", fp32, quantized, "--data", folder / "val.npz", "-o", html,
                    "--json", data, "--batches", "2", "--top", "2", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(data.read_text())
    assert len(report["culprits"]) == 2 and report["samples"] == 16
    rules = parse_overrides((tmp_path / "overrides.toml").read_text(), "overrides.toml")
    assert [r.node for r in rules] == [c["node"] for c in report["culprits"]]
    assert f"culprit {report['culprits'][0]['node']}" in result.output
    assert html.read_text().startswith("<!DOCTYPE html>")


def test_quantize_writes_the_report_at_the_end(outlier, tmp_path):
    fp32, _, _, _, folder = outlier
    out, html = tmp_path / "q.onnx", tmp_path / "q.html"
    result = invoke("quantize", fp32, "--calib", folder / "val.npz", "-o", out, "--report",
                    html, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(html.with_suffix(".json").read_text())
    assert report["quantized"] == str(out) and len(report["rows"]) == 6
    assert (tmp_path / "overrides.toml").exists()


def test_report_errors_are_one_line(outlier, tmp_path, small_cnn):
    fp32, quantized, _, _, folder = outlier
    val = folder / "val.npz"
    assert_one_line_error(invoke("report", fp32, fp32, "--data", val, "-o", tmp_path / "r.html"),
                          "not a QDQ model")
    other = tmp_path / "other.onnx"
    quantize(small_cnn, other, synthetic.image_feeds(8), QuantConfig(), quiet=True)
    assert_one_line_error(invoke("report", fp32, other, "--data", val, "-o",
                                 tmp_path / "r.html"), "not in the FP32 model")
    assert_one_line_error(invoke("report", fp32, quantized, "--data", val, "--batches", "0"),
                          "--batches must be at least 1")
    assert_one_line_error(invoke("report", fp32, quantized, "--data", val, "-o", quantized),
                          "is one of the models")
    assert_one_line_error(invoke("report", fp32, quantized, "--data", val, "-o",
                                 tmp_path / "missing" / "r.html"), "does not exist")
    assert_one_line_error(invoke("report", fp32, quantized, "--data", val, "-o",
                                 tmp_path / "r.html", "--pareto", tmp_path / "none.json"),
                          "cannot read --pareto")
    out = tmp_path / "q.onnx"
    assert_one_line_error(invoke("quantize", fp32, "--calib", "none", "-o", out, "--report",
                                 tmp_path / "q.html"), "--report measures the model on data")
    rules = tmp_path / "overrides.toml"
    rules.write_text('[[override]]\nop = "Conv"\nweights = "int8"\n')
    assert_one_line_error(invoke("quantize", fp32, "--calib", val, "-o", out, "--overrides",
                                 rules, "--report", tmp_path / "q.html"), "an input of this run")
    assert rules.read_text().startswith("[[override]]") and not out.exists()


def test_a_transformer_reports_its_lookups_and_float_nodes(bert17, tmp_path):
    from onnxq.models import tiny_bert

    quantized = tmp_path / "bert.q.onnx"
    quantize(bert17, quantized, tiny_bert.feeds("calib", 32), QuantConfig.from_preset("fast"),
             quiet=True)
    report = build_report(load_model(bert17), load_model(quantized),
                          tiny_bert.feeds("val", 16, 1), batches=2, leave_one_out=True)
    lookups = [e for row in report["rows"] for e in row["inputs"] if e["kind"] == "lookup"]
    assert lookups and all(35 < e["sqnr_db"] < 60 for e in lookups)  # int8 per-column tables
    assert {"MatMul", "Gemm"} <= {row["op"] for row in report["rows"]}
    assert any(why.startswith("kept float") for why in report["float_nodes"].values())
    assert report["culprits"][0]["only_layer_sqnr_db"] == min(
        row["only_layer_sqnr_db"] for row in report["rows"]
        if row["only_layer_sqnr_db"] is not None)
    names = {node.name for node in load_model(quantized).graph}
    for culprit in report["culprits"]:
        rules = parse_overrides(culprit["override"], "o.toml")
        assert all(any(rule.matches_node(name, "Any") for name in names) for rule in rules)
    assert all(row["float_gain_db"] is None or row["float_gain_db"] > -3
               for row in report["rows"])  # a float node rarely makes the output worse


def test_a_block_wise_weight_only_model_is_reported(bert17, tmp_path):
    from onnxq.models import tiny_bert

    quantized = tmp_path / "bert.b32.onnx"
    quantize(bert17, quantized, None, QuantConfig.from_preset(
        "fast", weights="int4", activations="none", bias_correction="none", block_size=32),
        quiet=True)
    feeds = tiny_bert.feeds("val", 16, 1)
    report = build_report(load_model(bert17), load_model(quantized), feeds, batches=2)
    blocked = [e for row in report["rows"] for e in row["inputs"]
               if e["granularity"].startswith("blocks of 32")]
    assert blocked and all(20 < e["sqnr_db"] < 30 for e in blocked)  # 4-bit: ~6 dB a bit
    assert not any(e["kind"] == "activation" for row in report["rows"] for e in row["inputs"])
    assert report["output_sqnr_db"] == pytest.approx(
        compare(load_model(bert17), load_model(quantized), feeds).outputs[0].sqnr_db, abs=0.05)
