"""The plan as a value: JSON round trip, ``--plan-out`` then ``--plan`` gives the same bytes,
an edited plan is what gets emitted, and a plan that does not fit is one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from cli_helpers import assert_one_line_error, invoke

from onnxq.calibrate.stream import calibrate
from onnxq.config import QuantConfig
from onnxq.emit.simulate import quantized_copy
from onnxq.io.model_io import load_model
from onnxq.models.synthetic import image_feeds
from onnxq.plan.annotate import annotate
from onnxq.plan.qparams import resolve_activations, resolve_weights
from onnxq.prepare.stage import prepare
from onnxq.spec import QuantPlan


def _quantize(small_cnn, npz, out, *args):
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--quiet", *args)
    assert result.exit_code == 0, result.output
    return result


def _initializer_types(path: Path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_plan_survives_json_and_binds_to_any_copy(small_cnn):
    model = load_model(small_cnn)
    config = QuantConfig(samples=8)
    prepare(model, config)
    plan = annotate(model, config)
    again = QuantPlan.from_json(plan.to_json())
    assert again == plan and again.uses and again.weights and again.biases
    copy = model.clone()
    bound = again.bind(copy)
    for name in plan.uses:  # the same readers, found in the copy's own nodes
        assert [(n.name, i) for n, i in bound.readers(name)] == \
            [(n.name, i) for n, i in plan.readers(name)]
        copy_graphs = {id(graph) for graph in copy.graphs()}
        assert all(id(node.graph) in copy_graphs for node, _ in bound.readers(name))


def test_quantized_copy_needs_no_annotation_and_leaves_the_model(small_cnn):
    model = load_model(small_cnn)
    config = QuantConfig(samples=8)
    prepare(model, config)
    plan = annotate(model, config)
    feeds = image_feeds(8, 0)
    qparams = resolve_activations(plan, calibrate(model, plan, feeds))
    before = len(model.graph)
    copy = quantized_copy(model, plan, qparams, resolve_weights(model, plan))
    assert len(model.graph) == before
    ops = [node.op_type for node in copy.graph]
    assert ops.count("DequantizeLinear") > ops.count("QuantizeLinear") > 0
    onnx.checker.check_model(ir.to_proto(copy), full_check=True)


def test_plan_out_then_plan_gives_the_same_bytes(small_cnn, npz, tmp_path):
    first, second, plan = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "plan.json"
    _quantize(small_cnn, npz, first, "--plan-out", plan)
    data = json.loads(plan.read_text())
    assert data["format"] == "onnxq.plan/1" and data["weights"] and data["uses"]
    _quantize(small_cnn, npz, second, "--plan", plan)
    assert first.read_bytes() == second.read_bytes()


def test_an_edited_plan_is_what_gets_emitted(small_cnn, npz, tmp_path):
    plan_path, out = tmp_path / "plan.json", tmp_path / "edited.onnx"
    _quantize(small_cnn, npz, tmp_path / "a.onnx", "--plan-out", plan_path)
    data = json.loads(plan_path.read_text())
    to_int4, to_float = list(data["weights"])[:2]
    data["weights"][to_int4]["qtype"] = "int4"
    del data["weights"][to_float]
    data["biases"] = {k: v for k, v in data["biases"].items() if v["weight"] != to_float}
    plan_path.write_text(json.dumps(data))
    _quantize(small_cnn, npz, out, "--plan", plan_path, "--int4-storage", "packed")
    types = _initializer_types(out)
    assert types[f"{to_int4}_quantized"] == onnx.TensorProto.INT4
    assert f"{to_float}_quantized" not in types and types[to_float] == onnx.TensorProto.FLOAT
    assert sum(t == onnx.TensorProto.INT8 for t in types.values()) >= 1
    written = onnx.load(str(out))
    assert {o.domain: o.version for o in written.opset_import}[""] >= 21  # int4 needs 21
    feed = image_feeds(1, 3)[0]
    fp32 = ort.InferenceSession(str(small_cnn)).run(None, feed)[0]
    got = ort.InferenceSession(str(out)).run(None, feed)[0]
    cosine = float(np.dot(fp32.ravel(), got.ravel())
                   / np.linalg.norm(fp32) / np.linalg.norm(got))
    assert cosine > 0.98


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["weights"].update({"no_such_weight": next(iter(d["weights"].values()))}),
     "names weight 'no_such_weight'"),
    (lambda d: d["uses"][next(iter(d["uses"]))].append(["no_such_node", 0]),
     "node 'no_such_node'"),
    (lambda d: d["activations"].update({"ghost": next(iter(d["activations"].values()))}),
     "names activation 'ghost'"),
    (lambda d: next(iter(d["weights"].values())).update({"qtype": "int7"}), "'int7'"),
    (lambda d: d.pop("uses"), "is not an onnxq plan"),
    (lambda d: d.update({"format": "other/2"}), "is not an onnxq plan"),
])
def test_a_plan_that_does_not_fit_is_one_error_line(small_cnn, npz, tmp_path, edit, needle):
    plan_path, out = tmp_path / "plan.json", tmp_path / "out.onnx"
    _quantize(small_cnn, npz, tmp_path / "a.onnx", "--plan-out", plan_path)
    data = json.loads(plan_path.read_text())
    edit(data)
    plan_path.write_text(json.dumps(data))
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--quiet",
                    "--plan", plan_path)
    assert_one_line_error(result, needle)
    assert not out.exists()


def test_a_plan_that_is_not_json_or_absent_is_one_error_line(small_cnn, npz, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path, needle in ((bad, "is not an onnxq plan"), (tmp_path / "none.json", "cannot read")):
        result = invoke("quantize", small_cnn, "--calib", npz, "-o", tmp_path / "o.onnx",
                        "--plan", path)
        assert_one_line_error(result, needle)
    assert not (tmp_path / "o.onnx").exists()


def _cli_in_fresh_python(prelude: str, *args: str) -> subprocess.CompletedProcess:
    """``onnxq ARGS`` in a new interpreter after ``prelude``, then a check that torch was
    never imported (a run that exits with an error ends before the check)."""
    script = (f"import sys\n{prelude}\nfrom onnxq.cli.commands import main\n"
              f"main({list(args)!r})\n"
              f"assert 'torch' not in sys.modules, 'the run pulled in torch'\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)


def test_import_and_a_default_w8a8_run_import_no_torch(small_cnn, tmp_path):
    done = _cli_in_fresh_python(
        "import onnxq\nassert 'torch' not in sys.modules, 'import onnxq pulled in torch'",
        "quantize", str(small_cnn), "--calib", "random", "--samples", "4",
        "-o", str(tmp_path / "q.onnx"), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "q.onnx").exists()


def test_learned_rounding_without_torch_is_one_error_line(small_cnn, tmp_path):
    done = _cli_in_fresh_python(
        "sys.modules['torch'] = None  # as if torch were not installed",
        "quantize", str(small_cnn), "--calib", "random", "--samples", "4",
        "--rounding", "brecq", "-o", str(tmp_path / "q.onnx"), "--quiet")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --rounding brecq needs torch"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "q.onnx").exists()


def test_a_plan_out_in_a_missing_folder_is_refused_before_the_run(small_cnn, npz, tmp_path):
    out = tmp_path / "out.onnx"
    result = invoke("quantize", small_cnn, "--calib", npz, "-o", out, "--quiet",
                    "--plan-out", tmp_path / "absent" / "plan.json")
    assert_one_line_error(result, "output folder does not exist")
    assert not out.exists()
