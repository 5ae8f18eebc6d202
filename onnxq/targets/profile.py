"""Target profiles: what one runtime needs of a QDQ model, as data (``<target>.toml`` in
this folder, one file per target; ``--target-file`` overrides entries)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from onnxq.errors import OnnxqError

FOLDER = Path(__file__).parent
RUNTIMES = ("ort-cpu", "ort-cuda", "ort-tensorrt", "qnn-htp", "openvino-cpu")
"""The runtimes ``onnxq validate --target`` knows how to run a model on."""
INT4_STORAGE = ("int8", "packed")


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """The rules of one target runtime, read by the plan, prepare and emit stages."""

    name: str
    description: str
    runtime: str
    """Where ``onnxq validate --target`` runs the model (one of ``RUNTIMES``)."""
    activations: tuple[str, ...]
    """Activation types the runtime runs; the first is the default."""
    weights: tuple[str, ...]
    """Weight types the runtime runs; the first is the default."""
    int4_storage: str = "packed"
    """How 4-bit weights are stored by default: ``packed`` (INT4 initializers) or ``int8``
    (the 4-bit grid in int8 containers, for runtimes with 8-bit kernels only)."""
    weight_axes: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per-channel weight axis by op type, where the runtime wants another than the output
    channel's (TensorRT's ConvTranspose)."""
    per_tensor_weights: tuple[str, ...] = ()
    """Op types whose weights take one scale (QNN's MatMul)."""
    constant_type: str | None = None
    """The grid of constants that are no Conv/Gemm/MatMul weight (embedding tables, the
    constants of ``quantized_ops``), where the runtime wants another than ``weights`` (QNN
    HTP: uint8; an int8 one fails to compile)."""
    quantize_bias: bool = True
    """Biases as int32 with scale s_input * s_weight (else kept float)."""
    quantize_outputs: tuple[str, ...] = ()
    """Op types whose output is quantized even when no reader is ('*': every op that
    reads a quantized input), so that the runtime sees a whole DQ -> op -> Q unit; every
    reader of such an output reads it through its DQ."""
    quantize_graph_outputs: tuple[str, ...] = ()
    """Op types whose such output is quantized when it is a graph output too (the graph
    output then is the DQ's; else it stays float, as exact as the runtime computes it; QNN
    HTP cannot give a FullyConnected a float output, while a Concat of boxes and class
    scores on one grid loses the scores)."""
    quantized_ops: tuple[str, ...] = ()
    """Op types, beyond onnxq's own (Conv, MatMul, Add, pooling, ...), that the runtime runs
    between Q/DQ, every float input quantized (constants per tensor); '*': every
    standard op but the pass-through ones and Shape/Cast (QNN runs whole graphs in
    integers)."""
    fused_patterns: tuple[str, ...] = ()
    """Fragile chains the runtime fuses into one op, quantized at their borders only
    (``GELU``: QNN's Gelu from Div/Erf/Add/Mul)."""
    keep_fragile_float: bool = True
    """Whether LayerNorm/GELU/softmax chains stay float by default (``--quantize-fragile``
    quantizes them anyway)."""
    keep_reduced_dims: bool = False
    """Whether reductions that drop their axes (``keepdims=0``) become ``keepdims=1`` and a
    Squeeze (OpenVINO CPU computes a Q/DQ after a dims-dropping ReduceMean wrongly)."""
    int8_lookups: bool = True
    """Whether embedding lookups gather int8 rows and dequantize after the Gather (else the
    table's DequantizeLinear stays before it)."""
    fused_activations: tuple[str, ...] = ("Relu", "Clip")
    """Activations the runtime fuses into the op before them (no Q/DQ between the two)."""
    float_ops: tuple[str, ...] = ()
    """Op types kept float on this target."""
    fixed_qparams: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    """Op type -> activation type -> [scale, zero point] of its output (QNN's 16-bit
    Sigmoid and Tanh)."""
    min_opset: int = 13
    blocked_weights: bool = False
    """Whether the runtime runs blocked (per-block scale) weight DequantizeLinear."""
    static_shapes: bool = False
    """Whether every input dim must be fixed (from ``--input-shape`` or the calibration
    data's shapes)."""

    def __post_init__(self) -> None:
        from onnxq.config import ACTIVATION_TYPES, WEIGHT_TYPES

        checks = [("runtime", (self.runtime,), RUNTIMES),
                  ("activations", self.activations, ACTIVATION_TYPES),
                  ("weights", self.weights, WEIGHT_TYPES),
                  ("int4_storage", (self.int4_storage,), INT4_STORAGE)]
        for field, values, allowed in checks:
            bad = [v for v in values if v not in allowed] or ([] if values else ["(none)"])
            if bad:
                raise OnnxqError(f"target {self.name}: {field} {bad[0]!r} is not one of "
                                 f"{', '.join(allowed)}")
        if self.constant_type is not None and self.constant_type not in ("int8", "uint8"):
            raise OnnxqError(f"target {self.name}: constant_type {self.constant_type!r} is not "
                             "int8 or uint8")
        for op, types in self.fixed_qparams.items():
            for qtype, params in types.items():
                if len(params) != 2 or not params[0] > 0:
                    raise OnnxqError(f"target {self.name}: fixed_qparams.{op}.{qtype} must be "
                                     "[scale > 0, zero point]")

    def quantizes_op(self, op_type: str) -> bool:
        """Whether ``op_type`` runs between Q/DQ by this target's ``quantized_ops``."""
        return "*" in self.quantized_ops or op_type in self.quantized_ops

    def quantizes_output(self, op_type: str) -> bool:
        """Whether ``op_type``'s output is quantized even with no quantized reader."""
        return "*" in self.quantize_outputs or op_type in self.quantize_outputs


def targets() -> list[str]:
    """The shipped target names (one TOML file each)."""
    return sorted(path.stem for path in FOLDER.glob("*.toml"))


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
        raise OnnxqError(f"cannot read {what} {path}: {reason}") from None


def _profile(entries: dict[str, Any], what: str) -> TargetProfile:
    fields = {field.name: field for field in dataclasses.fields(TargetProfile)}
    unknown = sorted(set(entries) - set(fields))
    if unknown:
        raise OnnxqError(f"{what} has unknown entry {unknown[0]!r}; the entries are "
                         f"{', '.join(fields)}")
    kinds = {"tuple": list, "dict": dict, "bool": bool, "int": int, "str": str}
    toml_names = {list: "array", dict: "table", bool: "boolean", int: "integer", str: "string"}
    values = {}
    for key, value in entries.items():
        kind = kinds[str(fields[key].type).split("[")[0].split(" |")[0]]  # str | None: str
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise OnnxqError(f"{what}: entry {key!r} must be a TOML {toml_names[kind]} "
                             f"(got {value!r})")
        values[key] = tuple(value) if kind is list else value
    try:
        return TargetProfile(**values)
    except TypeError as exc:
        raise OnnxqError(f"{what} is incomplete or malformed ({exc})") from None


def load_target(name: str = "ort-cpu", overrides: str | Path | None = None) -> TargetProfile:
    """The profile ``name`` (``targets()``), with the entries of the TOML file
    ``overrides`` on top."""
    if name not in targets():
        raise OnnxqError(f"unknown target {name!r}; use one of {', '.join(targets())}")
    entries = _read_toml(FOLDER / f"{name}.toml", "target")
    what = f"target {name}"
    if overrides is not None:
        entries |= _read_toml(Path(overrides), "--target-file")
        what = f"--target-file {overrides}"
    entries.setdefault("name", name)
    return _profile(entries, what)
