"""The ``onnxq`` command line: quantize, validate, inspect."""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from onnxq.allocate.groups import WIDTHS
from onnxq.allocate.importance import IMPORTANCE
from onnxq.analysis.matmulnbits import fusion_line
from onnxq.config import (
    ACTIVATION_TYPES,
    BIAS_CORRECTION,
    EQUALIZE,
    LOSSES,
    PRESETS,
    ROUNDING,
    WEIGHT_OBSERVERS,
    WEIGHT_TYPES,
    QuantConfig,
)
from onnxq.errors import OnnxqError
from onnxq.numerics.observers import OBSERVERS
from onnxq.plan.overrides import read_overrides
from onnxq.spec import QuantPlan
from onnxq.targets.profile import INT4_STORAGE, load_target, targets


def _echo_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


class Terminated(Exception):
    """SIGTERM arrived: unwind so that temporary files are removed on the way out."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _one_line_errors(func):
    """Report OnnxqError (and anything unexpected) as one line with a non-zero exit.

    Python warnings are printed as one ``warning:`` line too.  SIGTERM unwinds like
    Ctrl-C, so temporary files are removed and nothing is left at the output path.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _echo_warning
                return func(*args, **kwargs)
        except OnnxqError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (KeyboardInterrupt, Terminated) as exc:
            click.echo(f"error: {'terminated' if isinstance(exc, Terminated) else 'interrupted'};"
                       " nothing was written", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except MemoryError:
            click.echo("error: out of memory; use fewer --samples, a smaller --cache-mb, or a "
                       "machine with more memory", err=True)
            sys.exit(2)
        except Exception as exc:  # a bug: still one line, traceback on request
            if os.environ.get("ONNXQ_DEBUG"):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"error: internal error ({type(exc).__name__}: {first}); "
                       "rerun with ONNXQ_DEBUG=1 for the traceback", err=True)
            sys.exit(1)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _floats(option: str, text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise OnnxqError(f"{option} takes one number or three comma-separated numbers "
                         f"(R,G,B); got {text!r}")
    return values


def _image_options(func):
    """Preprocessing options shared by quantize and validate."""
    options = [
        click.option("--size", type=int, default=None,
                     help="Centre-crop size (default: the model's input size, else 224)."),
        click.option("--resize", type=int, default=None,
                     help="Resize the shorter side to this first (default: size * 256/224)."),
        click.option("--mean", default="127", show_default=True,
                     help="Pixel-space mean(s) subtracted: one value or R,G,B."),
        click.option("--std", default="128", show_default=True,
                     help="Pixel-space divisor(s): one value or R,G,B."),
        click.option("--bgr", is_flag=True, help="Feed channels as BGR instead of RGB."),
        click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto",
                     show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _make_image_options(size, resize, mean, std, bgr, layout):
    from onnxq.io.sources import ImageOptions

    divisors = _floats("--std", std)
    if min(divisors) <= 0:
        raise OnnxqError(f"--std must be positive (got {std!r}): it divides the pixel values")
    for name, value in (("--size", size), ("--resize", resize)):
        if value is not None and value < 1:
            raise OnnxqError(f"{name} must be at least 1 (got {value})")
    return ImageOptions(size, resize, _floats("--mean", mean), divisors, bgr, layout)


class OneLineGroup(click.Group):
    """A command group whose usage errors (bad option, MODEL is a folder, ...) are one
    ``error:`` line, like every other error."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            hint = f" (see onnxq {exc.ctx.info_name} --help)" if getattr(exc, "ctx", None) else ""
            click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=OneLineGroup)
@click.version_option(package_name="onnxq")
def main() -> None:
    """onnxq: post-training quantization of ONNX graphs to QDQ models."""


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME=1x3x224x224`` (``--input-shape``) as (name, dims), or one error line."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split("x"))
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) < 1:
        raise OnnxqError(f"--input-shape takes NAME=DxDx... with positive dims, e.g. "
                         f"input=1x3x224x224; got {text!r}")
    return name, shape


def _read_plan(path: str) -> QuantPlan:
    """The plan at ``path`` (``--plan``), or one error line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise OnnxqError(f"cannot read --plan {path}: {reason}") from None
    return QuantPlan.from_json(text, f"--plan {path}")


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output path (default: MODEL.int8.onnx next to the input).")
@click.option("--calib", default=None,
              help="Image folder, .npz file, folder of .npz files, 'random', or 'none' "
                   "(weight-only quantization, calibration-free pre-calibration).")
@_image_options
@click.option("--target", type=click.Choice(targets()), default="ort-cpu", show_default=True,
              help="Runtime the model is for: its QDQ rules (onnxq/targets/<target>.toml).")
@click.option("--target-file", type=click.Path(dir_okay=False), default=None,
              help="TOML file whose entries override the --target profile's.")
@click.option("--weights", type=click.Choice(WEIGHT_TYPES), default=None,
              help="Weight type (default: the target's, int8); uint4 only with --block-size; "
                   "fp4 (E2M1, a non-uniform grid) only on --target openvino-cpu.")
@click.option("--activations", type=click.Choice(ACTIVATION_TYPES), default=None,
              help="Activation type (default: the target's: uint8, int8 for tensorrt/ort-gpu).")
@click.option("--int4-storage", type=click.Choice(INT4_STORAGE), default=None,
              help="int4 weights as packed INT4, or the 4-bit grid in int8 containers, which "
                   "8-bit kernels run (default: the target's; int8 on ort-cpu).")
@click.option("--block-size", type=int, default=None, metavar="N",
              help="int4 MatMul/Gemm weights in blocks of N (16, 32, 64, 128...) along K, "
                   "which ORT CPU runs as MatMulNBits; the output head stays int8.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Fix a dynamic input's shape (targets with static shapes take the "
                   "calibration data's by default).")
@click.option("--observer", type=click.Choice(("auto", *OBSERVERS)), default="auto",
              show_default=True,
              help="Activation range observer (auto: mse for 4-bit activations, else minmax).")
@click.option("--weight-observer", type=click.Choice(WEIGHT_OBSERVERS), default="auto",
              show_default=True, help="Weight ranges: auto is mse (clipped to the least "
              "rounding MSE) with learned rounding, minmax otherwise.")
@click.option("--samples", type=int, default=256, show_default=True,
              help="Calibration samples (chosen deterministically with --seed).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--exclude", multiple=True, help="Glob on node name or op type to keep in float.")
@click.option("--overrides", "overrides_path", type=click.Path(dir_okay=False), default=None,
              help="TOML rules by node/tensor glob or op type: weight/activation type, "
                   "granularity or skip (onnxq report writes one for the worst layers).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default", show_default=True,
              help="fast: fusion + min-max; default: fusion + bias correction + refined ranges.")
@click.option("--fuse/--no-fuse", default=None, help="BatchNorm/Pad/MatMul+Add fusion "
              "(preset: on).")
@click.option("--equalize", type=click.Choice(EQUALIZE), default=None,
              help="Cross-layer equalization: exact (Relu/linear links only) or relu (ReLU6 "
                   "becomes Relu: changes FP32). Preset: none.")
@click.option("--bias-correction", type=click.Choice(BIAS_CORRECTION), default=None,
              help="empirical (on the quantized network), analytic (BatchNorm statistics, "
                   "data-free) or none. Preset: empirical (fast: none).")
@click.option("--refine-ranges/--no-refine-ranges", default=None,
              help="Activation ranges that minimize the consumers' output error "
                   "(preset: on; fast: off).")
@click.option("--rounding", type=click.Choice(ROUNDING), default="nearest", show_default=True,
              help="Weight rounding: nearest, learned by reconstruction per layer (adaround), "
                   "per block (brecq) or per block with QDrop (qdrop), or GPTQ's second-order "
                   "rounding of MatMul/Gemm weights (gptq: weight-only, reads --calib).")
@click.option("--iters", type=int, default=100, show_default=True,
              help="Reconstruction iterations per layer (adaround) or block (brecq/qdrop).")
@click.option("--learn-scale", is_flag=True,
              help="Reconstruction also learns the per-channel weight scales.")
@click.option("--learn-steps/--no-learn-steps", default=None,
              help="Reconstruction also learns the activation steps (LSQ); on by default "
                   "for 4-bit activations.")
@click.option("--loss", type=click.Choice(LOSSES), default="mse", show_default=True,
              help="Block reconstruction loss: output MSE, or MSE weighted by each output "
                   "element's diagonal Fisher (brecq/qdrop).")
@click.option("--cache-mb", type=int, default=2048, show_default=True,
              help="RAM for the reconstruction caches; beyond it they spill to temporary files.")
@click.option("--precalibrate/--no-precalibrate", default=None,
              help="Data-free weight pre-calibration (KL-matched scales, mean-preserving "
                   "rounding); on by default with --calib none.")
@click.option("--quantize-fragile", is_flag=True,
              help="Also quantize LayerNorm/GELU/softmax chains (kept float by default).")
@click.option("--min-cosine", type=float, default=0.5, show_default=True,
              help="Refuse (write nothing) when the written model's output cosine to FP32 on "
                   "a calibration sample is lower; -1 keeps any finite model.")
@click.option("--min-sqnr", type=float, default=None, metavar="DB",
              help="Move the fewest, most harmful activations to 16 bits until the output "
                   "SQNR to FP32 on held-out calibration samples is at least DB.")
@click.option("--avg-weight-bits", type=float, default=None, metavar="BITS",
              help="Bit allocation: int8 or int4 per weight group, least harm to the output "
                   "with at most BITS bits per weight element on average.")
@click.option("--size-mb", type=float, default=None, metavar="MB",
              help="Bit allocation under a size budget: quantized weights as stored "
                   "(integers, scales, zero points) in MB of 10^6 bytes.")
@click.option("--importance", type=click.Choice(IMPORTANCE), default="auto", show_default=True,
              help="Bit allocation's score: fisher (second-order output loss, one pass over "
                   "--score-samples), fisher-diag, or weight (data-free); auto: fisher with "
                   "data, weight with --calib none.")
@click.option("--score-samples", type=int, default=64, show_default=True,
              help="Calibration samples the fisher scores read.")
@click.option("--tie", multiple=True, metavar="REGEX",
              help="Weights whose names match REGEX take one width together (e.g. q/k/v).")
@click.option("--pareto", "pareto_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the measured trade-off across budgets (JSON, PNG beside it).")
@click.option("--ray", default=None, metavar="ADDRESS",
              help="Run bit allocation's jobs on a Ray cluster: its address, auto (the one "
                   "`ray start` runs) or local.")
@click.option("--plan-out", type=click.Path(dir_okay=False), default=None,
              help="Also write the run's plan (what is quantized and how, per tensor) as JSON.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), default=None,
              help="Quantize with this plan (an edited --plan-out) instead of annotating.")
@click.option("--report", "report_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the per-layer report (HTML; JSON and overrides.toml beside "
                   "it), measured on the calibration data.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars or notes.")
@_one_line_errors
def quantize(model, output, calib, size, resize, mean, std, bgr, layout, target, target_file,
             weights, activations, int4_storage, block_size, input_shapes, observer,
             weight_observer, samples, seed, exclude, overrides_path, preset, fuse, equalize,
             bias_correction, refine_ranges, rounding, iters, learn_scale, learn_steps, loss,
             cache_mb, precalibrate, quantize_fragile, min_cosine, min_sqnr, avg_weight_bits,
             size_mb, importance, score_samples, tie, pareto_out, ray, plan_out, plan_path,
             report_out, device, quiet) -> None:
    """Quantize MODEL to a QDQ model (no MODEL: the embedded EfficientNet-Lite0 demo)."""
    from onnxq.api import default_output
    from onnxq.api import quantize as quantize_file
    from onnxq.io.model_io import load_model
    from onnxq.io.sources import open_source
    from onnxq.report.write import report_paths

    passes = {"fuse": fuse, "equalize": equalize, "bias_correction": bias_correction,
              "refine_ranges": refine_ranges, "precalibrate": precalibrate}
    weight_only = calib == "none"
    if weight_only:
        preset, activations = "fast", "none"
        passes["precalibrate"] = precalibrate is not False
    elif rounding == "gptq" and activations in (None, "none"):  # weight-only, with data
        preset, activations = "fast", "none"
    config = QuantConfig.from_preset(
        preset, target=load_target(target, target_file), weights=weights,
        activations=activations, int4_storage=int4_storage, block_size=block_size,
        input_shapes=tuple(_input_shape(text) for text in input_shapes), observer=observer,
        weight_observer=weight_observer, samples=samples, seed=seed, exclude=tuple(exclude),
        keep_fragile_float=False if quantize_fragile else None, device=device,
        rounding=rounding, iters=iters, learn_scale=learn_scale, learn_steps=learn_steps,
        loss=loss, cache_mb=cache_mb, min_cosine=min_cosine, min_sqnr=min_sqnr,
        avg_weight_bits=avg_weight_bits, size_mb=size_mb,
        importance=importance, score_samples=score_samples, tie=tuple(tie),
        overrides=read_overrides(overrides_path) if overrides_path else (),
        **{name: value for name, value in passes.items() if value is not None})
    if model is None:
        from onnxq.cli.demo import run_default

        run_default(Path(output).parent if output else Path("onnxq-demo"), config, quiet)
        return
    if calib is None:
        raise OnnxqError("missing calibration data: pass --calib FOLDER|FILE.npz "
                         "(or --calib random to calibrate on random data, or --calib none for "
                         "weight-only quantization)")
    if plan_path and overrides_path:
        raise OnnxqError("--overrides changes annotation's decisions, which --plan replaces: "
                         "edit the plan, or drop --plan")
    plan = _read_plan(plan_path) if plan_path else None
    loaded = load_model(model)
    source = None if weight_only else open_source(calib, loaded, _make_image_options(
        size, resize, mean, std, bgr, layout), samples, seed)
    out = Path(output) if output else default_output(Path(model), config)
    paths = None
    if report_out:
        if weight_only:
            raise OnnxqError("--report measures the model on data; with --calib none run "
                             "onnxq report FP32 QUANT --data PATH afterwards")
        if config.fp4_weights:
            raise OnnxqError("--report measures each layer in ONNX Runtime, which has no fp4 "
                             "kernel; drop --report (onnxq validate --target openvino-cpu "
                             "scores the model)")
        paths = report_paths(report_out, Path(report_out).with_suffix(".json"))
        inputs = [Path(p).absolute() for p in (model, overrides_path, plan_path) if p]
        for path in paths.values():
            if path.absolute() in inputs:
                raise OnnxqError(f"--report would write {path}, which is an input of this "
                                 "run; put the report in another folder")
    report = quantize_file(model, out, source, config, quiet=quiet, model=loaded, plan=plan,
                           plan_out=plan_out, pareto_out=pareto_out, ray=ray)
    checked = ("" if report.output_cosine is None or math.isnan(report.output_cosine)
               else f"; {config.target.runtime if config.fp4_weights else 'ORT'} runs it, "
               f"output cosine to FP32 {report.output_cosine:.4f}")
    click.echo(f"wrote {out}: {report.quantized_weights} weights and "
               f"{report.quantized_activations} activations quantized in {report.seconds:.1f} s"
               f"{checked}")
    if report.promoted:
        before, after = report.guard_sqnr_db
        click.echo(f"--min-sqnr: {len(report.promoted)} activation group(s) moved to 16 bits, "
                   f"output SQNR {before:.1f} -> {after:.1f} dB on held-out calibration samples")
    if report.allocation:
        chosen = report.allocation
        counts = ", ".join(f"{chosen[f'{t}_groups']} {t}" for t in WIDTHS
                           if f"{t}_groups" in chosen)
        click.echo(f"bit allocation ({chosen['importance']}): {counts} weight groups, "
                   f"{chosen['avg_weight_bits']:.2f} bits per weight on average, "
                   f"{chosen['size_mb']:.2f} MB of weights (scored and solved in "
                   f"{chosen['score_seconds']:.1f} s)")
    if report.matmulnbits:
        click.echo(fusion_line(report.matmulnbits))
    if report.float_nodes and not quiet:
        click.echo(f"{len(report.float_nodes)} nodes left in float (see `onnxq inspect {out}`)")
    if paths is not None:
        _report(model, out, source, paths, quiet, config.device, pareto=report.pareto)


def _report(fp32: str, quantized: Path, source, paths: dict, quiet: bool, device: str,
            batches: int = 8, batch_size: int = 8, top: int = 3, leave_one_out: bool = False,
            pareto: dict | None = None) -> None:
    """Measure and write the per-layer report, then say where it went and what it found."""
    from onnxq.io.data import Limited
    from onnxq.io.model_io import load_model
    from onnxq.progress import Progress
    from onnxq.report.build import build_report
    from onnxq.report.write import write_report

    report = build_report(load_model(fp32), load_model(quantized),
                          Limited(source, batches * batch_size), batches=batches,
                          batch_size=batch_size, top=top, device=device,
                          leave_one_out=leave_one_out, progress=Progress(quiet),
                          names=(str(fp32), str(quantized)))
    written = write_report(report, paths, pareto)
    click.echo(f"wrote {', '.join(map(str, written))}: {len(report['rows'])} quantized nodes on "
               f"{report['samples']} samples, output SQNR {report['output_sqnr_db']} dB, "
               f"{report['cost']['seconds']:.1f} s")
    for culprit in report["culprits"]:
        fixed = culprit["suggestion_sqnr_db"]
        click.echo(f"  culprit {culprit['node']} ({culprit['op']}): only-this-layer output "
                   f"SQNR {culprit['only_layer_sqnr_db']} dB; suggested {culprit['suggestion']}"
                   + ("" if fixed is None else f" ({fixed} dB)"))


@main.command()
@click.argument("fp32", type=click.Path(dir_okay=False))
@click.argument("quantized", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Image folder, .npz file or folder of .npz files.")
@_image_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html",
              show_default=True, help="The HTML report (overrides.toml is written beside it).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON.")
@click.option("--batches", type=int, default=8, show_default=True,
              help="Batches measured (each layer's own sweep runs all of them).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--top", type=int, default=3, show_default=True,
              help="Culprits to find fixes for (worst first).")
@click.option("--leave-one-out", is_flag=True,
              help="Also measure each node left float with every other one quantized (what "
                   "promoting it gains in context; one more model run per node and batch).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--pareto", "pareto_path", type=click.Path(dir_okay=False), default=None,
              help="A bit allocation front (quantize --pareto's JSON) to plot in the report.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--quiet", is_flag=True)
@_one_line_errors
def report(fp32, quantized, data, size, resize, mean, std, bgr, layout, output, json_out,
           batches, batch_size, top, leave_one_out, seed, pareto_path, device, quiet) -> None:
    """Per-layer errors of QUANTIZED against FP32 on --data: the culprit layers, with an
    overrides file that fixes them."""
    import json

    from onnxq.emit.simulate import holds_float_grids
    from onnxq.io.model_io import load_model
    from onnxq.io.sources import open_source
    from onnxq.report.write import report_paths

    for option, value in (("--batches", batches), ("--batch-size", batch_size),
                          ("--top", top)):
        if value < 1:
            raise OnnxqError(f"{option} must be at least 1 (got {value})")
    for path in (output, json_out):
        if path is not None and Path(path).absolute() in (Path(fp32).absolute(),
                                                          Path(quantized).absolute()):
            raise OnnxqError(f"{path} is one of the models; choose another report path")
    pareto = None
    if pareto_path:
        try:
            pareto = json.loads(Path(pareto_path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OnnxqError(f"cannot read --pareto {pareto_path} ({type(exc).__name__}); "
                             "give the JSON quantize --pareto wrote") from None
    if holds_float_grids(load_model(quantized)):
        raise OnnxqError(f"{quantized} holds fp4 weights: the report measures each layer in "
                         "ONNX Runtime, which has no fp4 kernel (onnxq validate --target "
                         "openvino-cpu scores the model)")
    paths = report_paths(output, json_out)
    source = open_source(data, load_model(fp32), _make_image_options(
        size, resize, mean, std, bgr, layout), batches * batch_size, seed)
    _report(fp32, Path(quantized), source, paths, quiet, device, batches, batch_size, top,
            leave_one_out, pareto)


@main.command()
@click.argument("fp32", type=click.Path(dir_okay=False))
@click.argument("quantized", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Image folder, .npz file or folder of .npz files.")
@_image_options
@click.option("--samples", type=int, default=None, help="Validate on at most this many samples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True,
              help="ORT intra-op threads for the latency measurement (batch 1).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--target", type=click.Choice(targets()), default=None,
              help="Run QUANTIZED on this target's runtime (QNN HTP simulator, OpenVINO, ORT "
                   "CPU/CUDA/TensorRT): its rules checked, each layer's executed precision.")
@click.option("--quiet", is_flag=True)
@_one_line_errors
def validate(fp32, quantized, data, size, resize, mean, std, bgr, layout, samples, seed, threads,
             device, target, quiet) -> None:
    """Compare QUANTIZED with FP32: SQNR, cosine, top-1 agreement/accuracy, latency."""
    from onnxq.analysis.validate import compare, latency_ms
    from onnxq.emit.simulate import holds_float_grids
    from onnxq.io.model_io import load_model
    from onnxq.io.sources import open_source
    from onnxq.progress import Progress
    from onnxq.targets.conformance import problems
    from onnxq.targets.runtimes import load_on

    reference, candidate = load_model(fp32), load_model(quantized)
    if target is None and holds_float_grids(candidate):
        raise OnnxqError(f"{quantized} holds fp4 weights, which ONNX Runtime has no kernel "
                         "for; validate it with --target openvino-cpu")
    source = open_source(data, reference, _make_image_options(
        size, resize, mean, std, bgr, layout), samples, seed)
    labels = getattr(source, "labels", None)
    runner = candidate
    if target is not None:
        profile = load_target(target)
        found = problems(candidate, profile)
        click.echo(f"--target {target} ({profile.description}): " + (
                   "the model follows its rules" if not found else
                   f"{len(found)} rule(s) broken: " + "; ".join(found[:5])))
        runner = load_on(quantized, profile.runtime, threads)
        click.echo(f"  on {profile.runtime}: " + ", ".join(
            f"{kind} {count}" for kind, count in sorted(runner.layers.items())))
    result = compare(reference, runner, source, labels, device, Progress(quiet),
                     total=len(source))
    click.echo(f"{result.samples} samples")
    for out in result.outputs:
        click.echo(f"  output {out.name}: SQNR {out.sqnr_db:.2f} dB, cosine {out.cosine:.5f}")
    if result.top1_agreement is not None:
        click.echo(f"  top-1 agreement {result.top1_agreement:.4f}, KL {result.kl_to_fp32:.5f}")
    if result.top1_fp32 is not None:
        click.echo(f"  labelled top-1: FP32 {result.top1_fp32:.4f}, "
                   f"quantized {result.top1_quantized:.4f}")
    feed = next(iter(source))
    where = "ORT CPU" if target is None else runner.runtime
    if where == "qnn-htp":
        click.echo("  latency: not measured (the QNN HTP simulator's time is not a device's)")
        return
    click.echo(f"  latency (batch 1, {threads} thread(s)): FP32 on ORT CPU "
               f"{latency_ms(reference, feed, threads):.2f} ms, quantized on {where} "
               f"{latency_ms(runner, feed, threads):.2f} ms")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@_one_line_errors
def inspect(model) -> None:
    """Op counts, what is quantized and what is not (with the reason), size."""
    from onnxq.analysis.inspect import summarize
    from onnxq.io.model_io import check_model, load_model

    loaded = load_model(model)
    check_model(loaded, model)
    click.echo(summarize(loaded, Path(model)))
