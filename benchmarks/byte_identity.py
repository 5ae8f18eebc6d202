"""Byte identity of onnxq's outputs across a code change: quantize every suite model with
``--preset fast``, the default and ``--rounding brecq --iters 20`` at a small sample count and
print the SHA-256 of each output (or the one-line error a run stopped with).

    python benchmarks/byte_identity.py --json before.json          # on the old code
    python benchmarks/byte_identity.py --against before.json       # on the new code

``--against`` prints which outputs differ and exits 1 if any does.  ``--graph-only`` hashes
each output without its metadata (the stored config and report, which name every option,
so a new option changes them while the graph stays the same).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import click

from onnxq.models import suite

ROWS = {"fast": {"preset": "fast"}, "default": {"preset": "default"},
        "brecq20": {"preset": "default", "rounding": "brecq", "iters": 20}}


def _hash(path: Path, graph_only: bool) -> str:
    import onnx

    if not graph_only:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    model = onnx.load(str(path))
    del model.metadata_props[:]
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def digest(entry: suite.SuiteModel, tmp: Path, samples: int,
           graph_only: bool = False) -> dict[str, str]:
    """Row name -> SHA-256 of the quantized model (or ``error: ...``) for one suite model."""
    from onnxq.api import quantize
    from onnxq.config import QuantConfig
    from onnxq.errors import OnnxqError
    from onnxq.io.data import NpzFolder, model_inputs
    from onnxq.io.model_io import load_model

    fp32 = entry.export(tmp / f"{entry.name}.onnx")
    calib = suite.write_npz_folder(entry.feeds("calib", samples, 0), tmp / f"{entry.name}-calib")
    found = {}
    for row, options in ROWS.items():
        out = tmp / f"{entry.name}.{row}.onnx"
        data = NpzFolder(calib, model_inputs(load_model(fp32)), samples)
        try:
            quantize(fp32, out, data, QuantConfig.from_preset(**options, samples=samples),
                     quiet=True)
            found[row] = _hash(out, graph_only)
        except OnnxqError as exc:
            found[row] = f"error: {exc}"
    return found


@click.command()
@click.option("--models", default=",".join(suite.SUITE), show_default=True)
@click.option("--samples", type=int, default=8, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--against", type=click.Path(exists=True, dir_okay=False), default=None,
              help="digests from an earlier run to compare with")
@click.option("--graph-only", is_flag=True, help="hash without the model's metadata")
def main(models: str, samples: int, json_path: str | None, against: str | None,
         graph_only: bool) -> None:
    """Print each output's digest; compare with an earlier run's."""
    result: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models.split(","):
            entry = suite.SUITE[name]
            if (reason := entry.missing()) is not None:
                click.echo(f"{name}: skipped ({reason})")
                continue
            result[name] = digest(entry, Path(tmp), samples, graph_only)
            for row, value in result[name].items():
                click.echo(f"{name:12} {row:8} {value[:64]}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, sort_keys=True))
    if against:
        before = json.loads(Path(against).read_text())
        differ = [f"{name} {row}" for name, rows in result.items() for row, value in rows.items()
                  if before.get(name, {}).get(row) != value]
        click.echo(f"{len(differ)} of {sum(map(len, result.values()))} outputs differ"
                   + (f": {', '.join(differ)}" if differ else ""))
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
