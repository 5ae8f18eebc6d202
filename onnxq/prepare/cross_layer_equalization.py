"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free
Quantization")."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxq.graph import clip_bounds
from onnxq.ops import LAYERS
from onnxq.prepare.fuse_batchnorm import BN_STATS

logger = logging.getLogger(__name__)

CLIP_POLICIES = ("skip", "relu")


@dataclasses.dataclass
class _Pair:
    """Layer ``first`` feeds ``second`` through at most one Relu (or a Clip to turn into one)."""

    first: ir.Node
    second: ir.Node
    relu: bool
    clip: ir.Node | None = None


def _weight(node: ir.Node) -> np.ndarray:
    return node.inputs[1].const_value.numpy()


def _set(node: ir.Node, index: int, array: np.ndarray) -> None:
    value = node.inputs[index]
    value.const_value = ir.tensor(array.astype(np.float32), name=value.name)


def _out_axis_view(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """The weight as [out_channels, ...] (a view)."""
    return LAYERS[node.op_type].out_first(node, w)


def _in_channel_view(node: ir.Node, w: np.ndarray, channels: int) -> np.ndarray:
    """The weight as [in_channels, -1]: every entry that multiplies input channel i on row i."""
    if node.op_type == "Gemm":
        return (w.T if node.attributes.get_int("transB", 0) else w).reshape(channels, -1)
    groups = node.attributes.get_int("group", 1)
    per_group = channels // groups
    grouped = w.reshape(groups, w.shape[0] // groups, per_group, -1)  # [g, O/g, I/g, k]
    return np.moveaxis(grouped, 2, 1).reshape(channels, -1)


def _scale_in_channels(node: ir.Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if node.op_type == "Gemm":
        return w * (scale[None, :] if node.attributes.get_int("transB", 0) else scale[:, None])
    groups = node.attributes.get_int("group", 1)
    per_group = scale.size // groups
    grouped = w.reshape(groups, w.shape[0] // groups, per_group, -1)
    return (grouped * scale.reshape(groups, 1, per_group, 1)).reshape(w.shape)


def _scale_out_channels(node: ir.Node, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return w / LAYERS[node.op_type].per_output_channel(node, scale, w.ndim)


def _is_layer(node: ir.Node) -> bool:
    if node.op_type == "Conv":
        ok = True
    elif node.op_type == "Gemm":
        ok = (node.attributes.get_float("alpha", 1.0) == 1.0
              and node.attributes.get_float("beta", 1.0) == 1.0
              and not node.attributes.get_int("transA", 0))
    else:
        return False
    return ok and all(v is not None and v.const_value is not None and v.is_initializer()
                      and len(list(v.uses())) == 1 for v in node.inputs[1:])


def _only_consumer(value: ir.Value, graph: ir.Graph) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value in graph.outputs:
        return None
    node, index = uses[0]
    return node if index == 0 else None


class CrossLayerEqualizationPass(ir.passes.InPlacePass):
    """Rescale channel pairs across Conv/Gemm -> [Relu] -> Conv/Gemm so both weight ranges match.

    Changes: weights and biases of equalized pairs (output channel i of the first
    layer divided by s_i, input channel i of the second multiplied by s_i, with
    s_i = sqrt(r1_i / r2_i)), iterated over all pairs until the scales settle.
    Linear links and Relu are scale-equivariant, so this is exact in FP32.
    Clip (ReLU6) is not: with ``clip_policy="skip"`` (default) such links are
    left alone; ``"relu"`` replaces Clip(0, x) by Relu first (DFQ's choice), which
    changes the FP32 function and is reported.  Depthwise convolutions are handled
    as grouped layers.  ``absorb_high_bias`` moves max(0, mean - 3 std) of each
    Relu-linked channel (BatchNorm statistics from FuseBatchNormPass) into the
    next layer's bias when that layer has no padding; it is approximate
    (exact while the pre-activation stays above the moved amount).
    """

    def __init__(self, clip_policy: str = "skip", absorb_high_bias: bool = True,
                 max_sweeps: int = 50, tolerance: float = 1e-4):
        super().__init__()
        if clip_policy not in CLIP_POLICIES:
            raise ValueError(f"clip_policy must be one of {CLIP_POLICIES}")
        self.clip_policy = clip_policy
        self.absorb_high_bias = absorb_high_bias
        self.max_sweeps = max_sweeps
        self.tolerance = tolerance
        self.clips_replaced = 0
        self.pairs = 0

    def _find_pairs(self, graph: ir.Graph) -> list[_Pair]:
        pairs = []
        for node in graph:
            if not _is_layer(node):
                continue
            link = _only_consumer(node.outputs[0], graph)
            relu, clip = False, None
            if link is not None and link.op_type in ("Relu", "Clip"):
                if link.op_type == "Clip":
                    if self.clip_policy == "skip" or clip_bounds(link)[0] != 0.0:
                        continue
                    clip = link
                relu = True
                link = _only_consumer(link.outputs[0], graph)
            if link is not None and _is_layer(link):
                pairs.append(_Pair(node, link, relu, clip))
        return pairs

    def _replace_clips(self, graph: ir.Graph, pairs: list[_Pair]) -> None:
        for pair in pairs:
            clip = pair.clip
            if clip is not None:
                relu = ir.node("Relu", [clip.inputs[0]], name=f"{clip.name}_as_Relu")
                relu.outputs[0].name = f"{clip.outputs[0].name}_relu"
                relu.outputs[0].dtype = clip.outputs[0].dtype
                relu.outputs[0].shape = clip.outputs[0].shape
                graph.insert_before(clip, relu)
                clip.outputs[0].replace_all_uses_with(relu.outputs[0])
                graph.remove(clip, safe=True)
                self.clips_replaced += 1

    @staticmethod
    def _equalize(pair: _Pair) -> float:
        w1, w2 = _weight(pair.first), _weight(pair.second)
        out1 = _out_axis_view(pair.first, w1)
        r1 = np.abs(out1).reshape(out1.shape[0], -1).max(axis=1)
        r2 = np.abs(_in_channel_view(pair.second, w2, r1.size)).max(axis=1)
        valid = (r1 > 0) & (r2 > 0)
        scale = np.where(valid, np.sqrt(r1 / np.where(valid, r2, 1.0)), 1.0)
        _set(pair.first, 1, _scale_out_channels(pair.first, w1, scale))
        if len(pair.first.inputs) > 2:
            _set(pair.first, 2, pair.first.inputs[2].const_value.numpy() / scale)
        _set(pair.second, 1, _scale_in_channels(pair.second, w2, scale))
        if BN_STATS in pair.first.meta:
            mean, std = pair.first.meta[BN_STATS]
            pair.first.meta[BN_STATS] = (mean / scale, std / scale)
        return float(np.abs(np.log(scale)).max())

    @staticmethod
    def _absorb(pair: _Pair) -> bool:
        stats = pair.first.meta.get(BN_STATS)
        pads = pair.second.attributes.get_ints("pads", [0])
        has_biases = all(len(n.inputs) > 2 and n.inputs[2] is not None
                         for n in (pair.first, pair.second))
        if (not pair.relu or stats is None or not has_biases or any(pads)
                or pair.second.attributes.get_string("auto_pad", "NOTSET")
                not in ("NOTSET", "VALID")):
            return False
        mean, std = stats
        c = np.maximum(0.0, mean - 3.0 * std)
        if not c.any():
            return False
        w2 = _weight(pair.second)
        moved = _scale_in_channels(pair.second, w2, c.astype(np.float32))
        out = _out_axis_view(pair.second, moved)
        shift = out.reshape(out.shape[0], -1).sum(axis=1)
        _set(pair.first, 2, pair.first.inputs[2].const_value.numpy() - c)
        _set(pair.second, 2, pair.second.inputs[2].const_value.numpy() + shift)
        pair.first.meta[BN_STATS] = (mean - c, std)
        return True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        pairs = self._find_pairs(model.graph)
        self._replace_clips(model.graph, pairs)
        for _ in range(self.max_sweeps):
            if max((self._equalize(p) for p in pairs), default=0.0) < self.tolerance:
                break
        absorbed = sum(self._absorb(p) for p in pairs) if self.absorb_high_bias else 0
        self.pairs = len(pairs)
        logger.info("equalized %d layer pairs (%d Clip replaced by Relu, %d high-bias absorbed)",
                    len(pairs), self.clips_replaced, absorbed)
        return ir.passes.PassResult(model, bool(pairs))
