"""A model file run a piece at a time, so that ONNX Runtime never holds all its weights.

The graph is cut, in node order, into pieces whose weights stay under a byte budget.  A node
that reads only constants (a weight's DequantizeLinear, a Constant) joins the piece of its
first consumer, so ORT still sees, and fuses, the weight beside its MatMul.  Each piece is
its own session, fed the graph inputs and the values earlier pieces computed; a value is
dropped once no later piece reads it.  The outputs are those of the whole model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxq.io.runtime import open_session, run

PIECE_BYTES = 256 * 2**20
"""The weights (as float32) one piece's session holds at most (a larger node runs alone)."""
WHOLE_BYTES = 2**30
"""Model files whose weights, as float32, exceed this run in pieces (quantized ones too: a
session without graph optimizations dequantizes every weight before its first MatMul)."""


def float_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor as float32, from its shape: what a session may hold of it once
    dequantized (external data is not read)."""
    return 4 * int(np.prod(tensor.dims, dtype=np.int64))


def weight_nbytes(graph: onnx.GraphProto) -> int:
    """Bytes of the graph's initializers, as float32."""
    return sum(float_nbytes(t) for t in graph.initializer)


def _subgraph_reads(node: onnx.NodeProto) -> Iterator[str]:
    """Names the node's If/Loop/Scan bodies read (their own names included; harmless)."""
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else attr.graphs:
            for inner in graph.node:
                yield from inner.input
                yield from _subgraph_reads(inner)


def _reads(node: onnx.NodeProto) -> set[str]:
    return {name for name in (*node.input, *_subgraph_reads(node)) if name}


def cut(graph: onnx.GraphProto, budget: int = PIECE_BYTES) -> list[list[int]]:
    """The node indices of each piece, in order (each piece in the graph's node order)."""
    sizes = {t.name: float_nbytes(t) for t in graph.initializer}
    reads = [_reads(node) for node in graph.node]
    carried = {name: {name} for name in sizes}  # constant value -> the weights it is made of
    constant_only = []
    for node, names in zip(graph.node, reads, strict=True):
        only = names <= carried.keys()
        constant_only.append(only)
        if only:
            made = set().union(*(carried[name] for name in names))
            carried.update((out, made) for out in node.output)
    piece_of: dict[int, int] = {}
    piece, held, weights, total = 0, False, set(), 0
    for i, names in enumerate(reads):
        if constant_only[i]:
            continue
        made_of = set().union(*(carried.get(name, ()) for name in names))
        cost = sum(sizes[name] for name in made_of - weights)
        if held and total + cost > budget:  # a new piece loads all the node's weights
            piece, weights, total = piece + 1, set(), 0
            cost = sum(sizes[name] for name in made_of)
        piece_of[i], held = piece, True
        weights, total = weights | made_of, total + cost
    consumers: dict[str, list[int]] = {}
    for i, names in enumerate(reads):
        for name in names:
            consumers.setdefault(name, []).append(i)
    for i in reversed(range(len(graph.node))):  # constants go to their first consumer's piece
        if constant_only[i]:
            users = [piece_of[j] for out in graph.node[i].output
                     for j in consumers.get(out, []) if j in piece_of]
            piece_of[i] = min(users, default=0)
    pieces: list[list[int]] = [[] for _ in range(max(piece_of.values(), default=0) + 1)]
    for i in range(len(graph.node)):
        pieces[piece_of[i]].append(i)
    return [p for p in pieces if p]


def _piece_model(model: onnx.ModelProto, nodes: list[onnx.NodeProto], used: set[str],
                 inputs: Mapping[str, np.ndarray], outputs: list[str]) -> onnx.ModelProto:
    """A model of ``nodes`` (which read ``used``) reading ``inputs`` (typed from the arrays)
    and the initializers they use, whose outputs are ``outputs``."""
    graph = onnx.helper.make_graph(
        nodes, "piece",
        [onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
         for name, array in inputs.items()],
        [onnx.helper.make_empty_tensor_value_info(name) for name in outputs],
        [t for t in model.graph.initializer if t.name in used])
    piece = onnx.helper.make_model(graph, opset_imports=model.opset_import,
                                   ir_version=model.ir_version)
    piece.functions.extend(model.functions)
    return piece


def run_in_pieces(path: str | Path, feed: Mapping[str, np.ndarray], device: str = "cpu",
                  optimize: bool = True, budget: int = PIECE_BYTES) -> dict[str, np.ndarray]:
    """The outputs of the model file at ``path`` on ``feed``, run a piece at a time."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    pieces = cut(graph, budget)
    reads = [set().union(*(_reads(graph.node[i]) for i in piece)) for piece in pieces]
    finals = [o.name for o in graph.output]
    values = dict(feed)
    folder = {"session.model_external_initializers_file_folder_path": str(path.parent)}
    for k, piece in enumerate(pieces):
        nodes = [graph.node[i] for i in piece]
        made = {name for node in nodes for name in node.output if name}
        later = set(finals).union(*reads[k + 1:])
        outputs = sorted(made & later)
        inputs = {name: values[name] for name in sorted(reads[k] & set(values))
                  if name not in made}
        piece_model = _piece_model(model, nodes, reads[k], inputs, outputs)
        session = open_session(piece_model.SerializeToString(), device, optimize=optimize,
                               config=folder)
        values.update(zip(outputs, run(session, outputs, inputs), strict=True))
        del session
        values = {name: array for name, array in values.items() if name in later}
    return {name: values[name] for name in finals}
