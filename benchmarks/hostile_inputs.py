"""Hostile and unlucky inputs through the real command line: one row per case.

Each case builds its files in a fresh folder, runs ``python -m onnxq ...`` in a
subprocess and records the exit code, the last line printed, and, when it wrote
a model, whether ONNX Runtime runs that model and its cosine to FP32.

    python benchmarks/hostile_inputs.py --json hostile.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import onnx
from onnx import TensorProto

from onnxq.models import hostile

SECRET = "onnxq-secret-" + "s" * 2000


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _calib(work: Path, dtype=np.float32) -> Path:
    return _npz(work / "calib.npz", x=hostile.feeds(8, dtype=dtype))


def _model(work: Path, name: str = "m.onnx", **kwargs) -> Path:
    path = work / name
    onnx.save(hostile.conv_net(**kwargs), path)
    return path


def _external(work: Path, location: str) -> Path:
    (work / "d").mkdir()
    path = hostile.save_external(hostile.conv_net(), work / "d" / "m.onnx")
    hostile.point_external_data(path, location)
    return path


def _secret(work: Path) -> Path:
    path = work / "secret.txt"
    path.write_text(SECRET)
    return path


def case_traversal(work: Path):
    _secret(work)
    _external(work, "../secret.txt")
    return ["quantize", "m.onnx", "--calib", "../calib.npz", "-o", "../out.onnx"], work / "d"


def case_absolute(work: Path):
    secret = _secret(work)
    _external(work, str(secret))
    return ["quantize", "d/m.onnx", "--calib", "calib.npz", "-o", "out.onnx"], work


def case_symlink_out(work: Path):
    secret = _secret(work)
    path = _external(work, "m.onnx.data")
    (path.parent / "m.onnx.data").unlink()
    os.symlink(secret, path.parent / "m.onnx.data")
    return ["quantize", "m.onnx", "--calib", "../calib.npz", "-o", "../out.onnx"], work / "d"


def case_external_here(work: Path):
    (work / "d").mkdir()
    hostile.save_external(hostile.conv_net(), work / "d" / "m.onnx")
    return ["quantize", "m.onnx", "--calib", "../calib.npz", "-o", "../out.onnx"], work / "d"


def case_external_elsewhere(work: Path):
    (work / "d").mkdir()
    hostile.save_external(hostile.conv_net(), work / "d" / "m.onnx")
    return ["quantize", str(work / "d" / "m.onnx"), "--calib", "calib.npz", "-o",
            "out.onnx"], work


def case_symlink_inside(work: Path):
    (work / "d").mkdir()
    path = hostile.save_external(hostile.conv_net(), work / "d" / "m.onnx")
    (path.parent / "m.onnx.data").rename(path.parent / "blob.bin")
    os.symlink("blob.bin", path.parent / "m.onnx.data")
    return ["quantize", "d/m.onnx", "--calib", "calib.npz", "-o", "out.onnx"], work


def case_truncated_data(work: Path):
    (work / "d").mkdir()
    path = hostile.save_external(hostile.conv_net(), work / "d" / "m.onnx")
    data = path.parent / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    return ["quantize", "d/m.onnx", "--calib", "calib.npz", "-o", "out.onnx"], work


def _plain(model_kwargs: dict, *extra: str, calib_dtype=np.float32):
    def build(work: Path):
        _model(work, **model_kwargs)
        _calib(work, calib_dtype)
        return ["quantize", "m.onnx", "--calib", "calib.npz", "-o", "out.onnx", *extra], work
    return build


def _with_calib(arrays: Callable[[], dict], *extra: str):
    def build(work: Path):
        _model(work)
        _npz(work / "bad.npz", **arrays())
        return ["quantize", "m.onnx", "--calib", "bad.npz", "-o", "out.onnx", *extra], work
    return build


def _inf() -> dict:
    x = hostile.feeds(8)
    x[3, 1, 2, 2] = np.inf
    return {"x": x}


def case_bias_overflow(work: Path):
    onnx.save(hostile.bias_overflow_net(), work / "m.onnx")
    _npz(work / "calib.npz", x=hostile.feeds(8) * 1e-4)
    return ["quantize", "m.onnx", "--calib", "calib.npz", "-o", "out.onnx"], work


def _image_case(content: Callable[[Path], None]):
    def build(work: Path):
        onnx.save(hostile.conv_net(), work / "m.onnx")
        (work / "img").mkdir()
        content(work / "img" / "0_a.jpg")
        return ["quantize", "m.onnx", "--calib", "img", "--size", "8", "-o", "out.onnx"], work
    return build


def _bomb(path: Path) -> None:
    from PIL import Image

    Image.new("L", (20000, 20000)).save(path.with_suffix(".png"), optimize=True)
    path.unlink(missing_ok=True)


def _truncated_jpeg(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    path.write_bytes(path.read_bytes()[:200])


def case_not_zip(work: Path):
    _model(work)
    (work / "bad.npz").write_text("hello")
    return ["quantize", "m.onnx", "--calib", "bad.npz", "-o", "out.onnx"], work


def case_object_npz(work: Path):
    _model(work)
    np.savez(work / "bad.npz", x=np.array([{"a": 1}], dtype=object))
    return ["quantize", "m.onnx", "--calib", "bad.npz", "-o", "out.onnx"], work


def case_out_dir(work: Path):
    _model(work)
    _calib(work)
    (work / "outdir").mkdir()
    return ["quantize", "m.onnx", "--calib", "calib.npz", "-o", "outdir"], work


def case_model_dir(work: Path):
    _calib(work)
    (work / "m.onnx").mkdir()
    return ["quantize", "m.onnx", "--calib", "calib.npz", "-o", "out.onnx"], work


def case_checker(work: Path):
    model = hostile.conv_net()
    model.graph.node[1].input[0] = "undefined_tensor"
    onnx.save(model, work / "m.onnx")
    _calib(work)
    return ["quantize", "m.onnx", "--calib", "calib.npz", "-o", "out.onnx"], work


def case_huge_dim(work: Path):
    model = hostile.conv_net()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**12
    onnx.save(model, work / "m.onnx")
    return ["quantize", "m.onnx", "--calib", "random", "-o", "out.onnx"], work


def case_huge_runtime(work: Path):
    onnx.save(hostile.huge_runtime_net(), work / "m.onnx")
    return ["quantize", "m.onnx", "--calib", "calib.npz", "-o", "out.onnx"], work


def case_validate_mismatch(work: Path):
    _model(work)
    onnx.save(hostile.conv_net(seed=1), work / "other.onnx")
    _npz(work / "bad.npz", x=np.zeros((2, 3, 5, 5), np.float32))
    return ["validate", "m.onnx", "other.onnx", "--data", "bad.npz"], work


def case_full_disk(work: Path):
    _model(work)
    _calib(work)
    full = work / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
        return None
    try:  # leave no room at all
        with open(full / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
    except OSError:
        pass
    return ["quantize", "m.onnx", "--calib", "calib.npz", "-o", "full/out.onnx"], work


CASES: dict[str, Callable] = {
    "external data: ../ traversal (relative MODEL)": case_traversal,
    "external data: absolute location": case_absolute,
    "external data: symlink leaving the folder": case_symlink_out,
    "external data: run from the model's folder": case_external_here,
    "external data: run from elsewhere": case_external_elsewhere,
    "external data: symlink inside the folder": case_symlink_inside,
    "external data: truncated .data": case_truncated_data,
    "initializers as inputs, --preset fast": _plain({"weights_as_inputs": True}, "--preset",
                                                    "fast"),
    "initializers as inputs, default preset": _plain({"weights_as_inputs": True}),
    "float16 model": _plain({"dtype": TensorProto.FLOAT16}, calib_dtype=np.float16),
    "one +Inf in the calibration data": _with_calib(_inf),
    "all-NaN calibration data": _with_calib(lambda: {"x": np.full((4, 3, 8, 8), np.nan,
                                                                  np.float32)}),
    "W4A4 signed (int4 activations)": _plain({}, "--weights", "int4", "--activations", "int4"),
    "int32 bias overflow": case_bias_overflow,
    "nodes out of topological order": _plain({"reverse_nodes": True}),
    "int8 weights, int4 activations": _plain({}, "--activations", "int4"),
    "int8 weights, uint4 activations": _plain({}, "--activations", "uint4"),
    "user tensor named w1_scale": _plain({"bias_name": "w1_scale"}),
    "truncated .jpg": _image_case(_truncated_jpeg),
    "non-image .jpg": _image_case(lambda p: p.write_text("not an image")),
    "decompression-bomb PNG": _image_case(_bomb),
    ".npz that is not a zip": case_not_zip,
    "object-array .npz": case_object_npz,
    "0-d array in .npz": _with_calib(lambda: {"x": np.float32(1.0)}),
    "--seed -1": _plain({}, "--seed", "-1"),
    "--mean 1,2": _plain({}, "--mean", "1,2"),
    "--std 0": _plain({}, "--std", "0"),
    "-o under /proc": _plain({}, "-o", "/proc/out.onnx"),
    "full disk (tmpfs, filled)": case_full_disk,
    "declared input dim 10^12": case_huge_dim,
    "run-time tensor of 10^14 elements": case_huge_runtime,
    "validate: other model, wrong data": case_validate_mismatch,
    "graph that fails the checker": case_checker,
    "MODEL is a folder": case_model_dir,
    "-o is a folder": case_out_dir,
}


def _output_check(work: Path, cwd: Path, args: list[str]) -> str:
    """'runs, cosine C' or why the written model does not run."""
    import onnxruntime as ort

    if args[0] != "quantize" or "-o" not in args:
        return ""
    out = cwd / args[args.index("-o") + 1]
    model = cwd / args[1]
    if not out.is_file():
        return "no output file"
    try:
        quant = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        spec = quant.get_inputs()[0]
        x = hostile.feeds(1, seed=5, dtype=np.float16 if "16" in spec.type else np.float32)
        a = ref.run(None, {spec.name: x})[0].astype(np.float64).ravel()
        b = quant.run(None, {spec.name: x})[0].astype(np.float64).ravel()
        cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        return f"ORT runs it, cosine {cosine:.3f}"
    except Exception as exc:  # noqa: BLE001 - the benchmark reports any failure
        return f"ORT fails: {str(exc).splitlines()[0][:80]}"


def run_case(name: str, build: Callable, timeout: int = 300) -> dict:
    """Build and run one case in a fresh folder."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        try:
            return _run_in(work, name, build, timeout)
        finally:
            if (work / "full").is_mount():
                subprocess.run(["umount", str(work / "full")], capture_output=True, check=False)


def _run_in(work: Path, name: str, build: Callable, timeout: int) -> dict:
    _calib(work)
    built = build(work)
    if built is None:
        return {"case": name, "rc": None, "last_line": "skipped (cannot set up here)"}
    args, cwd = built
    proc = subprocess.run([sys.executable, "-m", "onnxq", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, check=False)
    lines = [ln for ln in (proc.stderr + proc.stdout).replace("\r", "\n").splitlines()
             if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    return {"case": name, "rc": proc.returncode, "last_line": last[:300], "lines": len(lines),
            "output": _output_check(work, cwd, args)}


@click.command()
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--only", default=None, help="Run only cases whose name contains this.")
def main(json_path: str | None, only: str | None) -> None:
    """Run every case and print a Markdown table."""
    rows = [run_case(name, build) for name, build in CASES.items()
            if only is None or only in name]
    click.echo("| case | exit | message | output |\n|---|---|---|---|")
    for row in rows:
        message = row["last_line"].replace("|", "\\|")
        click.echo(f"| {row['case']} | {row['rc']} | {message} | {row.get('output', '')} |")
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
