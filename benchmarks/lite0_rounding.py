"""Learned rounding on EfficientNet-Lite0: nearest / AdaRound / BRECQ / QDrop / pre-calibration.

Calibrates on ``--calib`` (default ``calib/`` of ../shared/data/imagenet-sample) and scores
on ``--val`` when given (default ``val/``); ``--save`` keeps the quantized models, so a run
on a GPU machine without the images can be scored here later with ``--score``.  Each row
runs once per reconstruction seed of ``--seeds``: the ablation of a change is its row
with and without it (``--set``), three seeds each.

    python benchmarks/lite0_rounding.py --rows nearest,brecq --weights int4 --json r.json
    python benchmarks/lite0_rounding.py --rows brecq --set learn_scale=true --set cache_mb=256
    python benchmarks/lite0_rounding.py --rows brecq --activations uint4 --first-last-int8 \
        --seeds 0,1,2 --set learn_steps=false
    python benchmarks/lite0_rounding.py --rows nearest,brecq --weights fp4 --target openvino-cpu
    python benchmarks/lite0_rounding.py --score saved/ --json r.json
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

import click

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.config import QuantConfig
from onnxq.io.data import ImageFolder
from onnxq.io.model_io import load_model
from onnxq.models.efficientnet_lite import INPUT_NAME, PREPROCESS, export
from onnxq.plan.overrides import OverrideRule
from onnxq.targets.profile import load_target
from onnxq.targets.runtimes import load_on

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"
ROWS = {
    "nearest": {"preset": "fast"},
    "nearest+BC (preset default)": {"preset": "default"},
    "precal": {"preset": "fast", "precalibrate": True},
    "adaround": {"preset": "fast", "rounding": "adaround"},
    "brecq": {"preset": "fast", "rounding": "brecq"},
    "default+brecq": {"preset": "default", "rounding": "brecq"},
    "default+qdrop": {"preset": "default", "rounding": "qdrop"},
    "default+adaround": {"preset": "default", "rounding": "adaround"},
    "qdrop": {"preset": "fast", "rounding": "qdrop"},
    "precal+brecq": {"preset": "fast", "rounding": "brecq", "precalibrate": True},
}
FIRST_LAST = ("/_conv_stem/Conv", "/_fc/Gemm")
"""Lite0's first and last layers, which the literature keeps at 8 bits (``--first-last-int8``)."""


def _score(fp32: Path, models: dict[str, Path], val_dir: Path, runtime: str = "ort-cpu"
           ) -> dict[str, dict]:
    """Each model's top-1, agreement and KL on ``val_dir``, run on ``runtime``."""
    val = ImageFolder(val_dir, INPUT_NAME, PREPROCESS)
    reference = load_model(fp32)
    scores = {}
    for row, path in models.items():
        quantized = load_model(path) if runtime == "ort-cpu" else load_on(path, runtime)
        result = compare(reference, quantized, val, labels=val.labels)
        scores[row] = {"top1": result.top1_quantized, "fp32_top1": result.top1_fp32,
                       "agreement": result.top1_agreement, "kl": result.kl_to_fp32}
    return scores


def _settings(settings: tuple[str, ...]) -> dict[str, object]:
    """``FIELD=VALUE`` pairs as QuantConfig overrides (numbers and booleans parsed)."""
    fields: dict[str, object] = {}
    for item in settings:
        field, _, text = item.partition("=")
        try:
            fields[field] = json.loads(text)
        except json.JSONDecodeError:
            fields[field] = text
    return fields


@click.command()
@click.option("--rows", default="nearest,adaround,brecq,qdrop,precal", show_default=True)
@click.option("--weights", default="int4", show_default=True)
@click.option("--activations", default="uint8", show_default=True)
@click.option("--target", default="ort-cpu", show_default=True,
              help="Target profile; the models are scored on its runtime (fp4 weights: "
                   "openvino-cpu).")
@click.option("--iters", default=100, show_default=True)
@click.option("--samples", default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--calib", "calib_dir", type=click.Path(file_okay=False), default=None)
@click.option("--val", "val_dir", type=click.Path(file_okay=False), default=None)
@click.option("--save", type=click.Path(file_okay=False), default=None)
@click.option("--score", "score_dir", type=click.Path(file_okay=False), default=None,
              help="Only score the models saved by an earlier --save run.")
@click.option("--seeds", default="0", show_default=True,
              help="Reconstruction seeds: each row runs once per seed.")
@click.option("--first-last-int8", is_flag=True,
              help="Int8 weights and uint8 inputs for the stem and the classifier.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="A QuantConfig field for every row, e.g. --set weight_observer=mse.")
def main(rows, weights, activations, target, iters, samples, device, calib_dir, val_dir, save,
         score_dir, seeds, first_last_int8, json_path, settings) -> None:
    """Quantize Lite0 once per row and seed; print top-1, agreement, KL and minutes."""
    if not (calib_dir or score_dir or (DATA / "calib").is_dir()):
        click.echo(f"skipped: {DATA} not found (or pass --calib)")
        return
    val_dir = Path(val_dir) if val_dir else (DATA / "val" if (DATA / "val").is_dir() else None)
    runtime = load_target(target).runtime
    with tempfile.TemporaryDirectory() as tmp:
        if score_dir:
            saved = json.loads((Path(score_dir) / "runs.json").read_text())
            fp32 = export(Path(tmp) / "lite0.onnx")
            models = {row: Path(score_dir) / r["file"] for row, r in saved.items()}
            for row, scores in _score(fp32, models, val_dir, runtime).items():
                saved[row].update(scores)
            runs = saved
        else:
            calib = ImageFolder(Path(calib_dir) if calib_dir else DATA / "calib", INPUT_NAME,
                                PREPROCESS, samples=samples, seed=0)
            out_dir = Path(save) if save else Path(tmp)
            out_dir.mkdir(parents=True, exist_ok=True)
            fp32 = export(Path(tmp) / "lite0.onnx")
            runs = {}
            overrides = tuple(OverrideRule("--first-last-int8", 0, node=node, weights="int8",
                                           activations="uint8")
                              for node in FIRST_LAST) if first_last_int8 else ()
            for row, seed in ((r, int(s)) for r in rows.split(",") for s in seeds.split(",")):
                fields = {**ROWS[row], "seed": seed, **_settings(settings)}
                config = QuantConfig.from_preset(fields.pop("preset"), weights=weights,
                                                 activations=activations, iters=iters,
                                                 samples=samples, device=device,
                                                 overrides=overrides,
                                                 target=load_target(target),
                                                 min_cosine=-1, **fields)  # keep every row
                name = f"{row} (seed {seed})"
                path = out_dir / f"lite0.{row.replace(' ', '_').replace('+', '-')}.s{seed}.onnx"
                start = time.perf_counter()
                quantize(fp32, path, calib, config, quiet=True)
                runs[name] = {"file": path.name, "minutes": (time.perf_counter() - start) / 60,
                              "weights": weights, "activations": activations,
                              "target": target,
                              "iters": config.iters,
                              "device": device, "samples": samples, "seed": seed,
                              "first_last_int8": first_last_int8,
                              "settings": _settings(settings),
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                              / 1024}
                click.echo(f"{name}: {runs[name]['minutes']:.2f} min", err=True)
                if save:  # after every row, so a run cut short keeps what it finished
                    (out_dir / "runs.json").write_text(json.dumps(runs, indent=1))
            if val_dir is not None:
                models = {row: out_dir / r["file"] for row, r in runs.items()}
                for row, scores in _score(fp32, models, val_dir, runtime).items():
                    runs[row].update(scores)
    click.echo(f"{'row':38} {'top1':>6} {'agree':>6} {'KL':>8} {'min':>6}")
    for row, r in runs.items():
        if "top1" in r:
            click.echo(f"{row:38} {r['top1']:6.3f} {r['agreement']:6.3f} {r['kl']:8.4f} "
                       f"{r['minutes']:6.2f}")
    if json_path:
        Path(json_path).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
