"""A transformer-sized stack of residual MLP blocks (batch x tokens x hidden, as
transformer exports lay activations out; dynamic batch and token count) with seeded
Gaussian weights, built directly as ONNX: for block-wise int4 weight latency and error at
sizes where MatMulNBits matters.  Not a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

INPUT_NAME = "hidden"


def build(layers: int = 4, hidden: int = 1024, ffn: int = 4096, seed: int = 0,
          rank: int = 3) -> ir.Model:
    """``layers`` blocks ``x + relu(x W1 + b1) W2`` on ``x: [batch, tokens, hidden]``
    (``rank`` 2: ``[tokens, hidden]``)."""
    lead = ["batch", "tokens"][3 - rank:]
    rng = np.random.default_rng(seed)
    x = ir.Value(name=INPUT_NAME, type=ir.TensorType(ir.DataType.FLOAT),
                 shape=ir.Shape([*lead, hidden]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 17}, name="matmul_stack")

    def constant(name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(array.astype(np.float32), name=name))
        value.type, value.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(array.shape)
        graph.register_initializer(value)
        return value

    def node(op: str, inputs: list[ir.Value], name: str) -> ir.Value:
        made = ir.node(op, inputs, name=name)
        made.outputs[0].name = f"{name}_output"
        made.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        width = ffn if name.endswith(("up/MatMul", "up/Add", "Relu")) else hidden
        made.outputs[0].shape = ir.Shape([*lead, width])
        graph.append(made)
        return made.outputs[0]

    current = x
    for k in range(layers):
        w1 = rng.standard_normal((hidden, ffn)) / np.sqrt(hidden)
        w2 = rng.standard_normal((ffn, hidden)) / np.sqrt(ffn) * 0.5
        up = node("MatMul", [current, constant(f"layers.{k}.up.weight", w1)],
                  f"/layers.{k}/up/MatMul")
        up = node("Add", [up, constant(f"layers.{k}.up.bias", 0.1 * rng.standard_normal(ffn))],
                  f"/layers.{k}/up/Add")
        act = node("Relu", [up], f"/layers.{k}/Relu")
        down = node("MatMul", [act, constant(f"layers.{k}.down.weight", w2)],
                    f"/layers.{k}/down/MatMul")
        current = node("Add", [current, down], f"/layers.{k}/Add")
    graph.outputs.append(current)
    return ir.Model(graph, ir_version=9)


def export(path: str | Path, **sizes) -> Path:
    """Save ``build(**sizes)`` to ``path`` (external data beside it over 1 GB)."""
    model = build(**sizes)
    path = Path(path)
    large = sum(v.const_value.nbytes for v in model.graph.initializers.values()) > 2**30
    ir.save(model, path, external_data=f"{path.name}.data" if large else None)
    return path


def feeds(count: int, tokens: int = 128, hidden: int = 1024, seed: int = 0
          ) -> list[dict[str, np.ndarray]]:
    """``count`` Gaussian inputs of ``tokens`` rows (one sample per feed)."""
    rng = np.random.default_rng(seed)
    return [{INPUT_NAME: rng.standard_normal((1, tokens, hidden)).astype(np.float32)}
            for _ in range(count)]
