"""Detect numerically fragile subgraphs (normalization, GELU, softmax) to keep them in float.

Eight-bit activations inside LayerNorm/GELU/softmax chains (fused or decomposed
into ReduceMean/Sub/Pow/Sqrt/Div/Erf/Tanh/Exp) see huge ranges and destroy the
output, so every node of such a chain is reported with the reason it stays float.
"""

from __future__ import annotations

import onnx_ir as ir

FUSED = {
    "LayerNormalization": "layer normalization",
    "SimplifiedLayerNormalization": "layer normalization",
    "GroupNormalization": "group normalization",
    "InstanceNormalization": "instance normalization",
    "BatchNormalization": "unfolded batch normalization",
    "Softmax": "softmax",
    "LogSoftmax": "softmax",
    "Gelu": "GELU",
    "FastGelu": "GELU",
}
NORM_CHAIN = {"Sub", "Pow", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Reciprocal"}
ELEMENTWISE = {"Add", "Mul", "Div", "Sub", "Pow"}


def _is_const(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _users(node: ir.Node) -> list[ir.Node]:
    return [user for out in node.outputs for user, _ in out.uses()]


def _affine_tail(node: ir.Node, region: set[ir.Node]) -> None:
    """Add Mul/Add-by-constant consumers (gamma, beta) after ``node`` to ``region``."""
    for user in _users(node):
        if user.op_type in ("Mul", "Add") and any(_is_const(v) for v in user.inputs):
            region.add(user)
            _affine_tail(user, region)


def _chain_back(value: ir.Value | None, stop: ir.Node, limit: int = 8) -> set[ir.Node] | None:
    """Normalization-chain producers of ``value`` back to ``stop`` (None if it leaves the chain)."""
    chain: set[ir.Node] = set()
    frontier = [value]
    while frontier:
        current = frontier.pop()
        producer = current.producer() if current is not None else None
        if producer is None or producer is stop or producer in chain:
            continue
        if producer.op_type not in NORM_CHAIN | {"ReduceMean"} or len(chain) >= limit:
            return None
        chain.add(producer)
        frontier.extend(v for v in producer.inputs if not _is_const(v))
    return chain


def _decomposed_layernorm(mean: ir.Node) -> set[ir.Node]:
    """Nodes of (x - mean(x)) / sqrt(var + eps), found from the first ReduceMean."""
    x = mean.inputs[0]
    region: set[ir.Node] = set()
    for sub in _users(mean):
        if sub.op_type != "Sub" or sub.inputs[0] is not x:
            continue
        for norm, index in sub.outputs[0].uses():
            if norm.op_type not in ("Div", "Mul") or index != 0:
                continue
            chain = _chain_back(norm.inputs[1], stop=sub)
            if chain and any(n.op_type in ("Sqrt", "Reciprocal") for n in chain):
                region |= chain | {mean, sub, norm}
                _affine_tail(norm, region)
    return region


def _gelu(core: ir.Node) -> set[ir.Node]:
    """Nodes of an Erf- or Tanh-based GELU around ``core``."""
    region = {core}
    node = core
    while node.inputs and node.inputs[0] is not None and node.inputs[0].producer() is not None:
        prev = node.inputs[0].producer()
        if prev.op_type not in ELEMENTWISE or len(region) > 6:
            break
        region.add(prev)
        node = prev
    frontier = [core]
    while frontier:
        node = frontier.pop()
        for user in _users(node):
            if user.op_type in ("Add", "Mul") and user not in region and len(region) < 10:
                region.add(user)
                frontier.append(user)
    return region


def _decomposed_softmax(exp: ir.Node) -> set[ir.Node]:
    """Exp -> ReduceSum -> Div (with the max-subtraction before Exp)."""
    region = {exp}
    for user in _users(exp):
        if user.op_type in ("ReduceSum", "Div"):
            region.add(user)
            region.update(u for u in _users(user) if u.op_type == "Div")
    prev = exp.inputs[0].producer() if exp.inputs[0] is not None else None
    if prev is not None and prev.op_type == "Sub":
        region.add(prev)
    return region if len(region) > 1 else set()


def find_fragile(graph: ir.Graph) -> dict[ir.Node, str]:
    """Every node that belongs to a fragile subgraph, with the reason."""
    found: dict[ir.Node, str] = {}

    def mark(nodes: set[ir.Node], reason: str) -> None:
        for node in nodes:
            found.setdefault(node, reason)

    for node in graph:
        if node.op_type in FUSED:
            mark({node}, FUSED[node.op_type])
        elif node.op_type == "ReduceMean":
            mark(_decomposed_layernorm(node), "decomposed layer normalization")
        elif node.op_type in ("Erf", "Tanh"):
            mark(_gelu(node), "GELU (Erf/Tanh chain)")
        elif node.op_type == "Exp":
            mark(_decomposed_softmax(node), "decomposed softmax")
    norm_inputs = {node.inputs[0] for node, reason in found.items()
                   if "normalization" in reason and node.op_type in (
                       "ReduceMean", "LayerNormalization", "SimplifiedLayerNormalization")}
    for value in norm_inputs:
        producer = value.producer() if value is not None else None
        if producer is not None and producer.op_type == "Add" and producer not in found:
            found[producer] = "residual add feeding a normalization"
    return found


def fused_chains(graphs: list[ir.Graph], patterns: tuple[str, ...]) -> set[ir.Node]:
    """The nodes of the fragile chains (``find_fragile``'s reasons) named in ``patterns``,
    from the op that first reads the chain's input on (what computes that input, read by
    two of the chain's ops, is no part of the fused op)."""
    if not patterns:
        return set()
    chain = {node for graph in graphs for node, reason in find_fragile(graph).items()
             if reason.split()[0] in patterns}
    sources = [node for node in chain if node.outputs and sum(
        user in chain for user, _ in node.outputs[0].uses()) >= 2]
    while sources:  # a source and what computes it, within the chain
        node = sources.pop()
        if node in chain:
            chain.discard(node)
            sources += [v.producer() for v in node.inputs if v is not None]
    return chain
