"""ONNX ops as differentiable torch functions: the registry behind the torch evaluator.

Each entry takes the node and its inputs (torch tensors, None for absent
optional inputs) and returns the node's outputs.  Ops not in ``OPS`` are not
supported; callers fall back (and say so) instead of crashing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
OpFn = Callable[[ir.Node, list], list]


class Unsupported(Exception):
    """An op (or an attribute of it) the torch evaluator does not implement."""


def _ints(node: ir.Node, name: str, default=None):
    return list(node.attributes.get_ints(name, default) or [])


def _spatial_padding(node: ir.Node, x: Tensor) -> tuple[Tensor, list[int]]:
    """Apply asymmetric ONNX ``pads`` to x; return symmetric padding for the torch op."""
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise Unsupported(f"{node.op_type} auto_pad={auto_pad}")
    rank = x.dim() - 2
    pads = _ints(node, "pads", [0] * 2 * rank) if auto_pad == "NOTSET" else [0] * 2 * rank
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return x, begin
    flat = [p for b, e in zip(reversed(begin), reversed(end), strict=True) for p in (b, e)]
    return F.pad(x, flat), [0] * rank


def _conv(node: ir.Node, xs: list) -> list:
    x, w, b = ([*xs, None])[:3]
    x, padding = _spatial_padding(node, x)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.dim() - 2]
    rank = x.dim() - 2
    return [conv(x, w, b, stride=_ints(node, "strides", [1] * rank), padding=padding,
                 dilation=_ints(node, "dilations", [1] * rank),
                 groups=node.attributes.get_int("group", 1))]


def _conv_transpose(node: ir.Node, xs: list) -> list:
    x, w, b = ([*xs, None])[:3]
    rank = x.dim() - 2
    if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in \
            node.attributes:
        raise Unsupported("ConvTranspose with auto_pad/output_shape")
    pads = _ints(node, "pads", [0] * 2 * rank)
    if pads[:rank] != pads[rank:]:
        raise Unsupported("ConvTranspose with asymmetric pads")
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
    return [conv(x, w, b, stride=_ints(node, "strides", [1] * rank), padding=pads[:rank],
                 output_padding=_ints(node, "output_padding", [0] * rank),
                 groups=node.attributes.get_int("group", 1),
                 dilation=_ints(node, "dilations", [1] * rank))]


def _gemm(node: ir.Node, xs: list) -> list:
    a, b, c = ([*xs, None])[:3]
    if node.attributes.get_int("transA", 0):
        a = a.transpose(0, 1)
    if node.attributes.get_int("transB", 0):
        b = b.transpose(0, 1)
    y = node.attributes.get_float("alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + node.attributes.get_float("beta", 1.0) * c
    return [y]


def _clip(node: ir.Node, xs: list) -> list:
    x, low, high = ([*xs, None, None])[:3]
    low = None if low is None else float(low.reshape(-1)[0])
    high = None if high is None else float(high.reshape(-1)[0])
    if low is not None and high is not None and x.is_floating_point() and low < high:
        return [F.hardtanh(x, low, high)]  # clamp's backward is several times slower on CPU
    return [torch.clamp(x, low, high)]


def _pool(node: ir.Node, xs: list) -> list:
    x = xs[0]
    rank = x.dim() - 2
    kernel = _ints(node, "kernel_shape")
    strides = _ints(node, "strides", [1] * rank)
    if node.attributes.get_int("ceil_mode", 0):
        raise Unsupported(f"{node.op_type} ceil_mode")
    x, padding = _spatial_padding(node, x)
    if node.op_type == "MaxPool":
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return [pool(x, kernel, strides, padding, _ints(node, "dilations", [1] * rank))]
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    include = bool(node.attributes.get_int("count_include_pad", 0))
    return [pool(x, kernel, strides, padding, count_include_pad=include)]


def _reshape(node: ir.Node, xs: list) -> list:
    shape = [int(s) for s in xs[1].tolist()]
    if not node.attributes.get_int("allowzero", 0):
        shape = [xs[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [xs[0].reshape(shape)]


def _axes(node: ir.Node, xs: list, index: int) -> list[int] | None:
    if len(xs) > index and xs[index] is not None:
        return [int(a) for a in xs[index].tolist()]
    return _ints(node, "axes") or None


def _squeeze(node: ir.Node, xs: list) -> list:
    axes = _axes(node, xs, 1)
    x = xs[0]
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(a % x.dim() for a in axes))]


def _unsqueeze(node: ir.Node, xs: list) -> list:
    x = xs[0]
    for axis in sorted(a % (x.dim() + len(_axes(node, xs, 1))) for a in _axes(node, xs, 1)):
        x = x.unsqueeze(axis)
    return [x]


def _slice(node: ir.Node, xs: list) -> list:
    x, starts, ends = xs[:3]
    axes = xs[3].tolist() if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
    steps = xs[4].tolist() if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes, steps, strict=True):
        if step != 1:
            raise Unsupported("Slice with steps != 1")
        size = x.shape[axis]
        index[axis] = slice(max(-size, min(size, start)), max(-size - 1, min(size, end)))
    return [x[tuple(index)]]


def _pad(node: ir.Node, xs: list) -> list:
    x, pads = xs[0], [int(p) for p in xs[1].tolist()]
    value = float(xs[2].item()) if len(xs) > 2 and xs[2] is not None else 0.0
    mode = node.attributes.get_string("mode", "constant")
    if mode != "constant" or (len(xs) > 3 and xs[3] is not None):
        raise Unsupported(f"Pad mode={mode} or axes")
    rank = x.dim()
    flat = [p for i in reversed(range(rank)) for p in (pads[i], pads[i + rank])]
    return [F.pad(x, flat, value=value)]


def _layer_norm(node: ir.Node, xs: list) -> list:
    x, scale, bias = ([*xs, None])[:3]
    axis = node.attributes.get_int("axis", -1) % x.dim()
    return [F.layer_norm(x, x.shape[axis:], scale, bias,
                         node.attributes.get_float("epsilon", 1e-5))]


def _reduce_mean(node: ir.Node, xs: list) -> list:
    axes = _axes(node, xs, 1)
    keep = bool(node.attributes.get_int("keepdims", 1))
    return [xs[0].mean(dim=tuple(axes) if axes else None, keepdim=keep)
            if axes else xs[0].mean()]


def _gather(node: ir.Node, xs: list) -> list:
    data, index = xs[0], xs[1].long().to(xs[0].device)
    axis = node.attributes.get_int("axis", 0) % data.dim()
    index = torch.where(index < 0, index + data.shape[axis], index)
    picked = data.index_select(axis, index.reshape(-1))
    return [picked.reshape(data.shape[:axis] + index.shape + data.shape[axis + 1:])]


def _shape(node: ir.Node, xs: list) -> list:
    dims = list(xs[0].shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64, device=xs[0].device)]


_TORCH_DTYPES = {ir.DataType.FLOAT: torch.float32, ir.DataType.FLOAT16: torch.float16,
                 ir.DataType.DOUBLE: torch.float64, ir.DataType.INT64: torch.int64,
                 ir.DataType.INT32: torch.int32, ir.DataType.BOOL: torch.bool}


def _cast(node: ir.Node, xs: list) -> list:
    target = ir.DataType(node.attributes.get_int("to"))
    if target not in _TORCH_DTYPES:
        raise Unsupported(f"Cast to {target}")
    return [xs[0].to(_TORCH_DTYPES[target])]


def _constant(node: ir.Node, xs: list) -> list:
    if "value" not in node.attributes:
        raise Unsupported("Constant without a tensor value")
    tensor = node.attributes["value"].as_tensor()
    return [torch.from_numpy(np.array(tensor.numpy(), copy=True))]


def _constant_of_shape(node: ir.Node, xs: list) -> list:
    shape = [int(d) for d in xs[0].tolist()]
    if "value" not in node.attributes:
        return [torch.zeros(shape, dtype=torch.float32, device=xs[0].device)]
    value = torch.from_numpy(np.array(node.attributes["value"].as_tensor().numpy(), copy=True))
    return [value.reshape(()).expand(shape).clone().to(xs[0].device)]


def _expand(node: ir.Node, xs: list) -> list:
    shape = torch.broadcast_shapes(xs[0].shape, tuple(int(d) for d in xs[1].tolist()))
    return [xs[0].expand(shape)]


def _range(node: ir.Node, xs: list) -> list:
    start, limit, delta = (x.item() for x in xs)
    return [torch.arange(start, limit, delta, dtype=xs[0].dtype, device=xs[0].device)]


def _split(node: ir.Node, xs: list) -> list:
    x = xs[0]
    axis = node.attributes.get_int("axis", 0) % x.dim()
    if len(xs) > 1 and xs[1] is not None:
        sizes = [int(s) for s in xs[1].tolist()]
    elif "split" in node.attributes:
        sizes = _ints(node, "split")
    else:
        parts = len(node.outputs)
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


def _resize(node: ir.Node, xs: list) -> list:
    """Nearest (asymmetric, floor) and linear (half-pixel) resizing of the spatial dims."""
    x = xs[0]
    mode = node.attributes.get_string("mode", "nearest")
    transform = node.attributes.get_string("coordinate_transformation_mode", "half_pixel")
    nearest = node.attributes.get_string("nearest_mode", "round_prefer_floor")
    if len(xs) > 3 and xs[3] is not None and xs[3].numel():
        size = [int(d) for d in xs[3].tolist()[2:]]
        scales = None
    else:
        size, scales = None, [float(v) for v in xs[2].tolist()]
        if scales[:2] != [1.0, 1.0]:
            raise Unsupported("Resize of the batch or channel dim")
        scales = scales[2:]
    if mode == "nearest" and transform == "asymmetric" and nearest == "floor":
        return [F.interpolate(x, size=size, scale_factor=scales, mode="nearest")]
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel") and x.dim() == 4:
        return [F.interpolate(x, size=size, scale_factor=scales, mode="bilinear",
                              align_corners=False)]
    raise Unsupported(f"Resize mode={mode} coordinate_transformation_mode={transform}")


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda node, xs: [fn(xs[0])]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda node, xs: [fn(xs[0], xs[1])]


OPS: dict[str, OpFn] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Relu": _unary(F.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Sqrt": _unary(torch.sqrt),
    "Identity": _unary(lambda x: x),
    "HardSwish": _unary(F.hardswish),
    "HardSigmoid": lambda node, xs: [torch.clamp(
        node.attributes.get_float("alpha", 0.2) * xs[0]
        + node.attributes.get_float("beta", 0.5), 0.0, 1.0)],
    "LeakyRelu": lambda node, xs: [F.leaky_relu(xs[0], node.attributes.get_float("alpha", 0.01))],
    "Clip": _clip,
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "AveragePool": _pool,
    "MaxPool": _pool,
    "Reshape": _reshape,
    "Flatten": lambda node, xs: [xs[0].reshape(
        int(np.prod(xs[0].shape[:node.attributes.get_int("axis", 1)])), -1)],
    "Transpose": lambda node, xs: [xs[0].permute(
        _ints(node, "perm") or list(reversed(range(xs[0].dim()))))],
    "Concat": lambda node, xs: [torch.cat(xs, dim=node.attributes.get_int("axis"))],
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Pad": _pad,
    "Softmax": lambda node, xs: [torch.softmax(xs[0], dim=node.attributes.get_int("axis", -1))],
    "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce_mean,
    "Gather": _gather,
    "Shape": _shape,
    "Cast": _cast,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Range": _range,
    "Split": _split,
    "Resize": _resize,
}


def run_node(node: ir.Node, inputs: list) -> list:
    """Evaluate ``node`` on torch ``inputs``; raises Unsupported for unknown ops."""
    fn = OPS.get(node.op_type)
    if fn is None or node.domain not in ("", "ai.onnx"):
        raise Unsupported(f"no torch implementation of {node.domain or 'ai.onnx'}::"
                          f"{node.op_type}")
    return fn(node, inputs)


def constant(value: ir.Value | None) -> Tensor | None:
    """A constant input as a torch tensor (None for an absent input)."""
    if value is None or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return torch.from_numpy(np.array(array, copy=True))
