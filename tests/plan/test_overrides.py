"""The overrides file: parsing with line-numbered errors, what each rule changes in the
plan and the written model, and where it is echoed."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.plan.annotate import annotate
from onnxq.plan.overrides import parse_overrides
from onnxq.prepare.stage import prepare
from onnxq.targets.profile import load_target


@pytest.mark.parametrize(("text", "line", "needle"), [
    ('[[override]]\nnode = "a"\nweights = "int8"\nshade = 3\n', 4, "unknown key 'shade'"),
    ('[[override]]\nnode = "a"\nskip = true\n[[override]]\nop = "Conv"\nweights = "int3"\n', 6,
     "'int3' is no type"),
    ('[[override]]\nweights = "int8"\n', 1, "matches nothing"),
    ('[[override]]\nnode = "a"\n', 1, "sets nothing"),
    ('[[override]]\nnode = "a"\nskip = "yes"\n', 3, "skip must be true or false"),
    ('[[override]]\ntensor = "x"\nskip = true\n', 3, "not tensor"),
    ('[[override]]\nnode = "a"\ngranularity = "per-row"\n', 3, "per-channel or per-tensor"),
    ('[[override]]\nnode = "a"\nweights = int8\n', 3, "fix the TOML there"),
    ('[override]\nnode = "a"\nskip = true\n', None, "double brackets"),
    ('[[rules]]\nnode = "a"\nskip = true\n', 1, "unknown entry 'rules'"),
])
def test_a_bad_rule_is_one_error_naming_its_line(text, line, needle):
    with pytest.raises(OnnxqError) as caught:
        parse_overrides(text, "o.toml")
    message = str(caught.value)
    assert needle in message and "\n" not in message, message
    if line is not None:
        assert f"line {line}" in message, message


def test_rules_keep_their_lines_and_round_trip():
    text = ('# comment\n[[override]]\nnode = "/a*"\nactivations = "uint16"\n\n'
            '[[override]]  # second\nop = "Gemm"\nweights = "int4"\ngranularity = "per-tensor"\n')
    first, second = parse_overrides(text, "o.toml")
    assert (first.line, first.node, first.activations) == (2, "/a*", "uint16")
    assert (second.line, second.op, second.weights, second.granularity) == (
        6, "Gemm", "int4", "per-tensor")
    again = parse_overrides("\n\n".join(r.to_toml() for r in (first, second)), "o.toml")
    assert [(r.node, r.op, r.weights, r.activations, r.granularity) for r in again] == [
        (r.node, r.op, r.weights, r.activations, r.granularity) for r in (first, second)]


def _plan(model_path, text, **config):
    model = ir.load(model_path)
    config = QuantConfig(overrides=parse_overrides(text, "o.toml"), **config)
    prepare(model, config)
    return model, annotate(model, config)


def test_each_action_changes_only_what_it_matches(small_cnn):
    model, base = _plan(small_cnn, '[[override]]\nop = "Nothing"\nskip = true\n',
                        weights="int4", activations="uint8")
    convs = [n for n in model.graph if n.op_type == "Conv"]
    stem, other = convs[0], convs[1]
    rules = (f'[[override]]\nnode = "{stem.name}"\nskip = true\n\n'
             f'[[override]]\nnode = "{other.name}"\nweights = "int4"\n'
             'granularity = "per-tensor"\nactivations = "uint16"\n\n'
             '[[override]]\nop = "Gemm"\ngranularity = "per-tensor"\n')
    model, plan = _plan(small_cnn, rules, weights="int4", activations="uint8")
    assert plan.float_nodes[stem.name] == "skipped by o.toml line 1"
    assert stem.inputs[1].name not in plan.weights
    weight = plan.weights[other.inputs[1].name]
    assert (weight.qtype, weight.axis) == ("int4", None)
    read = next(name for name, uses in plan.uses.items() if (other.name, 0) in uses)
    group = plan.groups()[plan.group(read)]
    assert {plan.activations[m].qtype for m in group} == {"uint16"}
    others = [spec.qtype for name, spec in plan.activations.items() if name not in group]
    assert others and set(others) == {"uint8"}
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert plan.weights[gemm.inputs[1].name].axis is None
    assert plan.decisions[other.name] == ["o.toml line 5"]
    untouched = [n for n in convs[2:] if n.inputs[1].name in plan.weights]
    assert all(base.weights[n.inputs[1].name] == plan.weights[n.inputs[1].name]
               for n in untouched)


def test_a_rule_that_matches_nothing_warns(small_cnn):
    with pytest.warns(UserWarning, match=r"o\.toml line 1 .* changes no quantized node"):
        _plan(small_cnn, '[[override]]\nnode = "missing*"\nweights = "int8"\n')


@pytest.mark.parametrize(("text", "flags", "needle"), [
    ('[[override]]\nop = "Conv"\nactivations = "uint16"\n', ("--target", "tensorrt"),
     "o.toml line 1: --target tensorrt does not run uint16 activations"),
    ('[[override]]\nop = "Conv"\nactivations = "uint4"\n', (),
     "o.toml line 1: uint4 activations need --weights int4"),
    ('[[override]]\nop = "Conv"\n\nweights = "int8"\nshade = 1\n', (), "o.toml line 5: unknown"),
])
def test_bad_overrides_on_the_command_line(tmp_path, small_cnn, npz, text, flags, needle):
    rules = tmp_path / "o.toml"
    rules.write_text(text)
    out = tmp_path / "q.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--overrides", rules,
                    *flags, "--quiet")
    assert_one_line_error(result, needle)
    assert not out.exists()


def test_overrides_reach_the_model_and_its_metadata(tmp_path, small_cnn, npz):
    model = ir.load(small_cnn)
    prepare(model, QuantConfig())
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    rules = tmp_path / "o.toml"
    rules.write_text(f'[[override]]\nnode = "{gemm.name}"\nactivations = "uint16"\n'
                     'granularity = "per-tensor"\n')
    out = tmp_path / "q.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--overrides", rules,
                    "--quiet")
    assert result.exit_code == 0, result.output
    written = ir.load(out)
    assert written.opset_imports[""] >= 21
    node = next(n for n in written.graph if n.name == gemm.name)
    dq_input, dq_weight = (v.producer() for v in node.inputs[:2])
    assert dq_input.inputs[0].dtype == ir.DataType.UINT16
    assert dq_weight.inputs[1].const_value.numpy().size == 1
    report = json.loads(written.metadata_props["onnxq.report"])
    assert report["overrides"] == [{"rule": "o.toml line 1", "nodes": 1, "sets": (
        f"node = '{gemm.name}', activations = 'uint16', granularity = 'per-tensor'")}]
    assert report["decisions"][gemm.name] == ["o.toml line 1"]
    stored = json.loads(written.metadata_props["onnxq.config"])["overrides"]
    assert stored[0]["line"] == 1 and stored[0]["activations"] == "uint16"
    shown = invoke("inspect", out).output
    assert f"overrides:\n  o.toml line 1: node = '{gemm.name}'" in shown
    assert "(1 nodes)" in shown


def test_overrides_with_a_plan_are_refused(tmp_path, small_cnn, npz):
    rules = tmp_path / "o.toml"
    rules.write_text('[[override]]\nop = "Conv"\nskip = true\n')
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", tmp_path / "q.onnx",
                    "--overrides", rules, "--plan", plan)
    assert_one_line_error(result, "--overrides", "--plan")


def test_bit_allocation_keeps_a_pinned_weight(tmp_path, small_cnn, npz):
    model = ir.load(small_cnn)
    prepare(model, QuantConfig())
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    rules = tmp_path / "o.toml"
    rules.write_text(f'[[override]]\nnode = "{gemm.name}"\nweights = "int8"\n')
    out = tmp_path / "q.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--overrides", rules,
                    "--avg-weight-bits", "4", "--importance", "weight", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(ir.load(out).metadata_props["onnxq.report"])
    widths = report["allocation"]["layers"]
    assert gemm.inputs[1].name not in widths
    assert set(widths.values()) == {"int4"}  # the budget holds for the others
    weights = {v.name: v for v in ir.load(out).graph.initializers.values()}
    stored = weights[f"{gemm.inputs[1].name}_quantized"].const_value.numpy()
    assert np.abs(stored).max() > 7  # int8, not the 4-bit grid


def test_the_target_checks_override_types():
    rules = parse_overrides('[[override]]\nop = "Conv"\nweights = "int4"\n', "o.toml")
    with pytest.raises(OnnxqError, match=r"o\.toml line 1: --target tensorrt does not run int4"):
        QuantConfig(target=load_target("tensorrt"), overrides=rules)
