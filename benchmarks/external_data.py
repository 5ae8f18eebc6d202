"""A ~1 GB model whose weights live in external data, quantized from its own folder and from
elsewhere; the output is loaded and run in ONNX Runtime.

    python benchmarks/external_data.py --gb 1.0
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def matmul_stack(path: Path, gigabytes: float, width: int = 4096) -> Path:
    """x[N, width] -> (MatMul -> Relu) x L, weights [width, width] float32 in ``NAME.data``."""
    layers = max(1, round(gigabytes * 1e9 / (width * width * 4)))
    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        current = f"r{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "stack",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=0)
    return path


def run(args: list[str], cwd: Path) -> tuple[int, str, float, float]:
    """Exit code, last line, seconds and the child's peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxq", *args], cwd=cwd, text=True,
                          capture_output=True, check=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, lines[-1] if lines else "", seconds, peak


@click.command()
@click.option("--gb", default=1.0, show_default=True, help="Model size in GB.")
def main(gb: float) -> None:
    """Quantize the model from its folder and from elsewhere; print a table."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "model").mkdir()
        fp32 = matmul_stack(tmp / "model" / "stack.onnx", gb)
        size = sum(p.stat().st_size for p in fp32.parent.iterdir()) / 1e9
        np.savez(tmp / "calib.npz", x=np.random.default_rng(1).standard_normal(
            (16, 4096)).astype(np.float32))
        click.echo(f"model: {size:.2f} GB ({fp32.name} + {fp32.name}.data)\n")
        click.echo("| run from | exit | seconds | peak RSS MB | output MB | ORT cosine |")
        click.echo("|---|---|---|---|---|---|")
        x = np.random.default_rng(2).standard_normal((2, 4096)).astype(np.float32)
        ref = ort.InferenceSession(str(fp32)).run(None, {"x": x})[0]
        for where, cwd, model in (("the model's folder", fp32.parent, fp32.name),
                                  ("elsewhere", tmp, str(fp32))):
            out = tmp / f"out-{cwd.name}.onnx"
            code, last, seconds, peak = run(["quantize", model, "--calib", str(tmp / "calib.npz"),
                                             "-o", str(out), "--quiet"], cwd)
            if code != 0:
                click.echo(f"| {where} | {code} | {seconds:.1f} | {peak:.0f} | - | {last} |")
                continue
            got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
            cos = float(ref.ravel() @ got.ravel() / np.linalg.norm(ref) / np.linalg.norm(got))
            click.echo(f"| {where} | {code} | {seconds:.1f} | {peak:.0f} | "
                       f"{sum(p.stat().st_size for p in tmp.glob(out.name + '*')) / 1e6:.0f} | "
                       f"{cos:.4f} |")
            for path in tmp.glob(out.name + "*"):  # the model and its .data
                path.unlink()


if __name__ == "__main__":
    main()
