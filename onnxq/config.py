"""The quantization configuration: what the user chose, in one frozen record."""

from __future__ import annotations

import dataclasses

from onnxq.allocate.groups import candidate_types
from onnxq.allocate.importance import IMPORTANCE
from onnxq.allocate.solve import Budget
from onnxq.errors import OnnxqError
from onnxq.numerics.affine import QTYPES, WIDE
from onnxq.numerics.observers import OBSERVERS
from onnxq.plan.overrides import OverrideRule
from onnxq.targets.profile import INT4_STORAGE, TargetProfile, load_target

WEIGHT_TYPES = ("int8", "int4", "uint4", "fp4")
BLOCKED_OPSET = 21
"""The first opset whose DequantizeLinear takes ``block_size``."""
MIN_BLOCK = 16
"""The smallest block (a power of two) ONNX Runtime fuses into MatMulNBits."""
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16", "uint4", "int4", "none")
WEIGHT_OBSERVERS = ("auto", "minmax", "mse")
EQUALIZE = ("none", "exact", "relu")
BIAS_CORRECTION = ("empirical", "analytic", "none")
LEARNED_ROUNDING = ("adaround", "brecq", "qdrop")
ROUNDING = ("nearest", *LEARNED_ROUNDING, "gptq")
LOSSES = ("mse", "fisher")
PRESETS: dict[str, dict[str, object]] = {
    "fast": {"fuse": True, "equalize": "none", "bias_correction": "none",
             "refine_ranges": False},
    "default": {"fuse": True, "equalize": "none", "bias_correction": "empirical",
                "refine_ranges": True},
}


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Choices for one quantization run (the CLI flags map one to one)."""

    weights: str | None = None
    """Weight type (None: the target's default)."""
    activations: str | None = None
    """Activation type, or ``none`` for weight-only (None: the target's default)."""
    observer: str = "auto"
    """Activation range observer (``auto``: ``mse`` for 4-bit activations, else min-max)."""
    weight_observer: str = "auto"
    samples: int | None = 256
    seed: int = 0
    exclude: tuple[str, ...] = ()
    keep_fragile_float: bool | None = None
    """Keep LayerNorm/GELU/softmax chains float (None: the target's default)."""
    fuse: bool = True
    equalize: str = "none"
    bias_correction: str = "empirical"
    refine_ranges: bool = True
    rounding: str = "nearest"
    iters: int = 100
    learn_scale: bool = False
    learn_steps: bool | None = None
    """Learn the activation steps with the rounding (None: for 4-bit activations)."""
    loss: str = "mse"
    cache_mb: int = 2048
    precalibrate: bool = False
    device: str = "cpu"
    batch_size: int = 8
    min_cosine: float = 0.5
    min_sqnr: float | None = None
    target: TargetProfile = dataclasses.field(default_factory=load_target)
    int4_storage: str | None = None
    """How int4 weights are stored: ``packed`` or ``int8`` containers (None: the target's)."""
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Fixed input shapes (``--input-shape``), for targets that need static shapes."""
    avg_weight_bits: float | None = None
    """Bit allocation's budget: average grid bits per quantized weight element."""
    size_mb: float | None = None
    """Bit allocation's budget: MB of quantized weights as stored."""
    importance: str = "auto"
    """The score bit allocation ranks by (``onnxq.allocate.importance``)."""
    score_samples: int = 64
    """Calibration samples the data-aware importance scores read."""
    tie: tuple[str, ...] = ()
    """Regular expressions: the weights each matches take one width together."""
    overrides: tuple[OverrideRule, ...] = ()
    """The ``--overrides`` file's rules, which change annotation's decisions."""
    block_size: int | None = None
    """4-bit MatMul/Gemm weights in blocks of this many along K (``--block-size``)."""

    def __post_init__(self) -> None:
        target = self.target
        if self.weights is None:
            object.__setattr__(self, "weights", target.weights[0])
        if self.activations is None:
            object.__setattr__(self, "activations", target.activations[0])
        if self.observer == "auto":
            object.__setattr__(self, "observer", "mse" if self.four_bit_activations
                               else "minmax")
        if self.keep_fragile_float is None:
            object.__setattr__(self, "keep_fragile_float", target.keep_fragile_float)
        eight_bit = self.activations in ("uint8", "int8")
        if self.int4_storage is None:  # 8-bit kernels need 8-bit activations beside them
            object.__setattr__(self, "int4_storage",
                               target.int4_storage if eight_bit else "packed")
        elif self.int4_storage == "int8" and not eight_bit:
            raise OnnxqError(f"--int4-storage int8 runs int4 weights on 8-bit kernels, which "
                             f"need 8-bit activations (not {self.activations}); use "
                             "--int4-storage packed")
        checks = [("weights", self.weights, WEIGHT_TYPES),
                  ("activations", self.activations, ACTIVATION_TYPES),
                  ("observer", self.observer, OBSERVERS),
                  ("weight_observer", self.weight_observer, WEIGHT_OBSERVERS),
                  ("device", self.device, ("cpu", "cuda")),
                  ("equalize", self.equalize, EQUALIZE),
                  ("bias_correction", self.bias_correction, BIAS_CORRECTION),
                  ("rounding", self.rounding, ROUNDING),
                  ("loss", self.loss, LOSSES),
                  ("int4_storage", self.int4_storage, INT4_STORAGE),
                  ("importance", self.importance, IMPORTANCE)]
        for field, value, allowed in checks:
            if value not in allowed:
                raise OnnxqError(f"unsupported {field} '{value}'; use one of {', '.join(allowed)}")
        runs = [("weights", self.weights, target.weights),
                ("activations", self.activations, (*target.activations, "none"))]
        for field, value, allowed in runs:
            if value not in allowed:
                raise OnnxqError(f"--target {target.name} does not run {value} {field}; use "
                                 f"{' or '.join(allowed)} (or another --target)")
        if self.activations == "none" and (self.refine_ranges or self.learned_rounding
                                           or self.bias_correction == "empirical"):
            raise OnnxqError("weight-only quantization (no calibration data) cannot refine "
                             "ranges, learn rounding or measure bias correction; use "
                             "--preset fast with --bias-correction analytic|none")
        if self.four_bit_activations and self.weights != "int4":
            raise OnnxqError(f"--activations {self.activations} needs --weights int4: runtimes "
                             "have no kernel that mixes 4-bit activations with 8-bit weights")
        if self.fp4_weights and (self.rounding == "gptq" or self.precalibrate):
            raise OnnxqError("fp4 weights round to nearest or learn their rounding; "
                             "--rounding gptq and --precalibrate work on integer grids: use "
                             "--rounding nearest|adaround|brecq|qdrop")
        if self.rounding == "gptq" and (self.activations != "none" or self.precalibrate):
            raise OnnxqError("--rounding gptq rounds weights against their FP32 inputs, for "
                             "weight-only quantization: give it --calib DATA, drop "
                             "--activations and --precalibrate")
        if self.learn_steps is None:
            object.__setattr__(self, "learn_steps", self.learned_rounding
                               and self.four_bit_activations)
        elif self.learn_steps and not (self.learned_rounding and self.activations != "none"):
            raise OnnxqError("--learn-steps learns activation steps during reconstruction; "
                             "use it with --rounding adaround|brecq|qdrop and quantized "
                             "activations")
        if self.loss == "fisher" and self.rounding not in ("brecq", "qdrop"):
            raise OnnxqError("--loss fisher weights block outputs; use it with --rounding "
                             "brecq or qdrop")
        if self.iters < 1:
            raise OnnxqError(f"--iters must be at least 1 (got {self.iters})")
        if self.cache_mb < 0:
            raise OnnxqError(f"--cache-mb must be 0 or more (got {self.cache_mb})")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise OnnxqError(f"--min-cosine must lie in [-1, 1] (got {self.min_cosine})")
        if self.min_sqnr is not None and not 0 < self.min_sqnr <= 120:
            raise OnnxqError(f"--min-sqnr must lie in (0, 120] dB (got {self.min_sqnr})")
        if self.min_sqnr is not None and not self.needs_data:
            raise OnnxqError("--min-sqnr measures quantized activations on calibration data; "
                             "drop it for weight-only quantization (--calib none)")
        wide = WIDE.get(self.activations)
        if self.min_sqnr is not None and wide not in target.activations:
            raise OnnxqError(f"--min-sqnr moves activations to {wide}, which --target "
                             f"{target.name} does not run; drop --min-sqnr or use another "
                             "--target")
        self._check_budget()
        self._check_overrides()
        self._check_blocks()
        if self.seed < 0:
            raise OnnxqError(f"--seed must be 0 or more (got {self.seed})")
        if self.samples is not None and self.samples < 1:
            raise OnnxqError(f"--samples must be at least 1 (got {self.samples})")

    def _check_budget(self) -> None:
        """Refuse a weight budget the target or the other flags cannot honour."""
        if self.avg_weight_bits is not None and self.size_mb is not None:
            raise OnnxqError("--avg-weight-bits and --size-mb are two budgets; give one")
        if self.budget is None:
            if self.tie:
                raise OnnxqError("--tie ties weights' widths under a budget; add "
                                 "--avg-weight-bits or --size-mb")
            return
        if self.budget.value <= 0:
            raise OnnxqError(f"{self.budget.flag} must be above 0 (got {self.budget.value:g})")
        types = candidate_types(self.target.weights)
        if len(types) < 2:
            raise OnnxqError(f"{self.budget.flag} chooses between int8 and int4 weights, but "
                             f"--target {self.target.name} runs only {', '.join(types)}; drop "
                             "the budget or use another --target")
        if self.importance in ("fisher", "fisher-diag") and not self.needs_data:
            raise OnnxqError(f"--importance {self.importance} reads calibration data; use "
                             "--importance weight (data-free) with --calib none")
        if self.score_samples < 1:
            raise OnnxqError(f"--score-samples must be at least 1 (got {self.score_samples})")

    def _check_blocks(self) -> None:
        """Refuse a block size ORT does not fuse, or flags blocks do not work with yet."""
        size = self.block_size
        if size is None:
            if self.weights == "uint4":
                raise OnnxqError("--weights uint4 stores MatMul weights in blocks with zero "
                                 "points; add --block-size 32 (or use --weights int4)")
            return
        if size < MIN_BLOCK or size & (size - 1):
            raise OnnxqError(f"--block-size must be a power of two of at least {MIN_BLOCK} "
                             f"(ONNX Runtime fuses only those into MatMulNBits); got {size}")
        if self.weights not in ("int4", "uint4"):
            raise OnnxqError("--block-size quantizes int4 or uint4 MatMul weights in blocks; "
                             "add --weights int4")
        if not self.target.blocked_weights:
            raise OnnxqError(f"--target {self.target.name} does not run blocked weights; drop "
                             "--block-size or use --target ort-cpu|ort-gpu")
        if self.learned_rounding:
            raise OnnxqError("learned rounding does not handle blocked weights yet; use "
                             "--rounding nearest or gptq with --block-size")
        if self.budget is not None:
            raise OnnxqError(f"bit allocation chooses per-channel widths, not blocks; drop "
                             f"{self.budget.flag} or --block-size")

    def _check_overrides(self) -> None:
        """Refuse an override whose type the target or the run cannot honour."""
        target = self.target
        for rule in self.overrides:
            if rule.weights is not None and rule.weights not in target.weights:
                raise OnnxqError(f"{rule.where}: --target {target.name} does not run "
                                 f"{rule.weights} weights; use {' or '.join(target.weights)}")
            if rule.activations is None:
                continue
            if not self.needs_data:
                raise OnnxqError(f"{rule.where}: weight-only quantization (--calib none) "
                                 "quantizes no activations; drop the rule's activations")
            if rule.activations not in target.activations:
                raise OnnxqError(f"{rule.where}: --target {target.name} does not run "
                                 f"{rule.activations} activations; use "
                                 f"{' or '.join(target.activations)}")
            if rule.activations == "int4":
                raise OnnxqError(f"{rule.where}: ONNX Runtime's fused kernels compute signed "
                                 "int4 activations wrongly; use uint4")
            if QTYPES[rule.activations].dtype.bitwidth == 4 and self.weights != "int4":
                raise OnnxqError(f"{rule.where}: {rule.activations} activations need "
                                 "--weights int4 (no runtime mixes them with 8-bit weights)")

    @property
    def budget(self) -> Budget | None:
        """The weight budget bit allocation works to (None: every weight at ``weights``)."""
        if self.avg_weight_bits is not None:
            return Budget("avg-weight-bits", self.avg_weight_bits)
        if self.size_mb is not None:
            return Budget("size-mb", self.size_mb)
        return None

    @classmethod
    def from_preset(cls, preset: str = "default", **overrides) -> QuantConfig:
        """The config of a named pipeline preset, with ``overrides`` on top."""
        if preset not in PRESETS:
            raise OnnxqError(f"unknown preset '{preset}'; use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    @property
    def weight_range_observer(self) -> str:
        """The weight range method: ``auto`` is MSE-clipped ranges under learned rounding
        (which then fits the rounding around the clipping), min-max otherwise."""
        if self.weight_observer != "auto":
            return self.weight_observer
        return "minmax" if self.rounding == "nearest" else "mse"

    @property
    def activation_symmetric(self) -> bool:
        """Signed activation grids are symmetric; unsigned ones are asymmetric."""
        return self.activations != "none" and QTYPES[self.activations].signed

    @property
    def four_bit_activations(self) -> bool:
        """Whether activations are 4-bit (``--activations uint4|int4``)."""
        return self.activations in ("int4", "uint4")

    @property
    def fp4_weights(self) -> bool:
        """Whether some weights are fp4 (``--weights fp4`` or an override's), which ONNX
        Runtime has no kernel for: the written model is checked on the target's runtime."""
        return self.weights == "fp4" or any(rule.weights == "fp4" for rule in self.overrides)

    @property
    def learned_rounding(self) -> bool:
        """Whether block reconstruction learns the rounding (``--rounding adaround|brecq|
        qdrop``)."""
        return self.rounding in LEARNED_ROUNDING

    @property
    def reads_data(self) -> bool:
        """Whether the run reads calibration data: for activations, or for GPTQ's inputs."""
        return self.needs_data or self.rounding == "gptq"

    @property
    def needs_data(self) -> bool:
        """Whether the run reads calibration data (weight-only quantization does not)."""
        return self.activations != "none"

    @property
    def required_opset(self) -> int:
        """The lowest default-domain opset whose Q/DQ supports the chosen types."""
        kinds = [self.weights] + ([self.activations] if self.activations != "none" else [])
        if self.budget is not None:  # bit allocation may choose any width the target runs
            kinds += candidate_types(self.target.weights)
        if self.min_sqnr is not None:  # the guard may move activations to 16 bits
            kinds.append("uint16")
        kinds += [kind for rule in self.overrides
                  for kind in (rule.weights, rule.activations) if kind is not None]
        blocked = self.block_size is not None or any(
            rule.granularity == "per-block" for rule in self.overrides)
        return max(self.target.min_opset, *(QTYPES[kind].min_opset for kind in kinds),
                   *([BLOCKED_OPSET] if blocked else []))

    @property
    def weight_storage(self) -> dict[str, str]:
        """Weight grid -> the type that stores it (int4 in int8 containers, when chosen)."""
        return {"int4": "int8"} if self.int4_storage == "int8" else {}
