"""Materialize a QuantPlan as QuantizeLinear/DequantizeLinear nodes (the only emission step)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.graph import FreshNames, model_values
from onnxq.numerics.affine import QTYPES, QType, quantize
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan

logger = logging.getLogger(__name__)


PACKED = (ir.DataType.INT4, ir.DataType.UINT4)
"""Integer types ORT cannot hand back as numpy arrays."""
TENSOR_KEY = "onnxq.tensor"
"""Metadata of a QuantizeLinear whose input was renamed: the activation it quantizes (a
quantized graph output hands its name to its DQ)."""
SHAPE_READERS = ("Shape", "Size")
"""Ops that read only their input's shape, which its DequantizeLinear output shares."""


def activation_readouts(model: ir.Model) -> dict[str, tuple[str, bool]]:
    """Activation name -> (the tensor to read its quantized values at, whether that tensor
    holds the integers).  The integers are read at the output of the emitted QuantizeLinear,
    which keeps ORT's fused integer kernels (a DequantizeLinear output read as a graph
    output would stop them forming); 4-bit ones, which numpy cannot hold, at the output of
    the DequantizeLinear."""
    found = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "QuantizeLinear" or node.inputs[0] is None:
            continue
        dequantize = next((user for user, _ in node.outputs[0].uses()
                           if user.op_type == "DequantizeLinear"), None)
        if dequantize is None:
            continue
        name = node.metadata_props.get(TENSOR_KEY, node.inputs[0].name)
        found[name] = ((dequantize.outputs[0].name, False) if node.outputs[0].dtype in PACKED
                       else (node.outputs[0].name, True))
    return found


def _integer_tensor(q: np.ndarray, container: QType, name: str) -> ir.TensorProtocol:
    """Integers ``q`` as a ``container`` tensor; 4-bit ones held packed, two to a byte (the
    int4 weights of a large model take the memory they take on disk)."""
    tensor = ir.tensor(q.astype(container.numpy_dtype), dtype=container.dtype, name=name)
    if container.dtype.bitwidth != 4:
        return tensor
    return ir.PackedTensor(np.frombuffer(tensor.tobytes(), np.uint8), container.dtype,
                           shape=tensor.shape, name=name)


class EmitQDQPass(ir.passes.InPlacePass):
    """Insert Q/DQ pairs for activations and DQ behind integer weights and int32 biases.

    Changes: every planned activation gets ``<name>_QuantizeLinear`` and
    ``<name>_DequantizeLinear`` nodes read by the planned consumers (and its Shape/Size
    readers; a planned graph output becomes the DQ's output, under its own name); every
    planned weight/bias initializer is replaced by an integer initializer (of the
    ``storage`` type, when one is given for its grid and it has no blocks) behind a
    DequantizeLinear, so the file really shrinks.  Scale, zero point and observer are
    written to each node's doc_string for inspection in Netron.
    """

    def __init__(self, plan: QuantPlan, activation_qparams: dict[str, QParams],
                 weight_qparams: dict[str, QParams], storage: Mapping[str, str] | None = None,
                 int8_lookups: bool = True):
        super().__init__()
        self.plan = plan
        self.activation_qparams = activation_qparams
        self.weight_qparams = weight_qparams
        self.storage = dict(storage or {})
        """Weight grid -> the type its integers are stored as (int4 in int8 containers)."""
        self.int8_lookups = int8_lookups

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        values = model_values(model)
        self.names = FreshNames(model)
        for name, spec in self.plan.weights.items():
            granularity = ("per-tensor" if spec.axis is None
                           else f"blocks of {spec.block_size} on axis {spec.axis}"
                           if spec.block_size else f"per-channel axis {spec.axis}")
            self._emit_constant(graph, graph.initializers[name], self.weight_qparams[name],
                                f"weight {spec.qtype} symmetric {granularity}, {spec.observer}")
        for name, bias in self.plan.biases.items():
            act = self.activation_qparams.get(bias.activation)
            weight = self.weight_qparams.get(bias.weight)
            if act is None or weight is None:
                continue
            value = graph.initializers[name]
            scale = (act.scale.astype(np.float64) * weight.scale.astype(np.float64)).reshape(-1)
            n = value.const_value.shape[0]
            if scale.size not in (1, n):  # grouped ConvTranspose: weight scales repeat per group
                scale = np.tile(scale, n // scale.size)
            if scale.size == 1:
                scale = np.full(n, scale[0])
            params = QParams(scale.astype(np.float32), np.zeros(n, np.int64), "int32", 0)
            self._emit_constant(graph, value, params, "bias int32, scale = s_input * s_weight")
        for name in self.plan.uses:
            params = self.activation_qparams.get(name)
            if params is None:
                continue
            self._emit_activation(values[name], self.plan.readers(name), params,
                                  name in self.plan.outputs)
        for each in model.graphs():
            if self.int8_lookups:
                for dq in [n for n in each if n.op_type == "DequantizeLinear"]:
                    self._dequantize_after_lookups(dq)
            each.sort()
        modified = bool(self.plan.weights or self.plan.uses)
        if modified:
            logger.info("emitted Q/DQ for %d activations and %d weights",
                        len(self.activation_qparams), len(self.plan.weights))
        return ir.passes.PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        """Every QuantizeLinear feeds a DequantizeLinear and every axis is in range."""
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type == "QuantizeLinear" and not all(
                    user.op_type == "DequantizeLinear" for user, _ in node.outputs[0].uses()):
                raise ir.passes.PostconditionError(f"{node.name} has a consumer that is not a DQ")
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            axis = node.attributes.get_int("axis", None)
            shape = node.inputs[0].shape
            if axis is not None and shape is not None and not -len(shape) <= axis < len(shape):
                raise ir.passes.PostconditionError(f"{node.name}: axis {axis} out of range")

    def _qparam_initializers(self, graph: ir.Graph, prefix: str, params: QParams,
                             stored: str | None = None) -> tuple[ir.Value, ir.Value]:
        grid = QTYPES[stored or params.qtype]
        scale = (params.scale if params.block_size else params.scale.reshape(-1)
                 if params.axis is not None else params.scale.reshape(()))
        zp = params.zero_point.reshape(scale.shape).astype(grid.numpy_dtype)
        scale_name, zp_name = self.names(f"{prefix}_scale"), self.names(f"{prefix}_zero_point")
        scale_value = ir.Value(name=scale_name, const_value=ir.tensor(
            scale.astype(np.float32), name=scale_name))
        zp_value = ir.Value(name=zp_name, const_value=ir.tensor(
            zp, dtype=grid.dtype, name=zp_name))
        graph.register_initializer(scale_value)
        graph.register_initializer(zp_value)
        return scale_value, zp_value

    @staticmethod
    def _describe(params: QParams) -> str:
        scale = params.scale.reshape(-1)
        if scale.size == 1:
            return f"scale={scale[0]:.6g} zero_point={int(params.zero_point.reshape(-1)[0])}"
        groups = f"blocks of {params.block_size}" if params.block_size else "channels"
        return f"scales {scale.min():.4g}..{scale.max():.4g} over {scale.size} {groups}"

    def _emit_constant(self, main: ir.Graph, value: ir.Value, params: QParams, how: str) -> None:
        """Replace a float initializer of the main graph by integers + DequantizeLinear, in
        the graph of its consumers when they all sit in one If/Loop/Scan body."""
        homes = {id(node.graph): node.graph for node, _ in value.uses() if node.graph}
        graph = next(iter(homes.values())) if len(homes) == 1 else main
        stored = (params.qtype if params.block_size  # blocks: ORT's int4 MatMulNBits path
                  else self.storage.get(params.qtype, params.qtype))
        container = QTYPES[stored]
        w = value.const_value.numpy()
        q = quantize(w, params.scale, params.zero_point, QTYPES[params.qtype], params.axis,
                     params.block_size)
        name = value.name
        q_name = self.names(f"{name}_quantized")
        q_value = ir.Value(name=q_name, const_value=_integer_tensor(q, container, q_name))
        graph.register_initializer(q_value)
        scale, zp = self._qparam_initializers(graph, name, params, stored)
        if stored != params.qtype:
            how = how.replace(f"weight {params.qtype}", f"weight {params.qtype} in {stored}")
        attrs = {"axis": params.axis} if params.axis is not None else {}
        if params.block_size:
            attrs["block_size"] = params.block_size
        dq = ir.node("DequantizeLinear", [q_value, scale, zp], attributes=attrs,
                     name=self.names(f"{name}_DequantizeLinear"),
                     doc_string=f"{how}; {self._describe(params)}")
        dq.outputs[0].name = self.names(f"{name}_dequantized")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = ir.Shape(w.shape)
        value.replace_all_uses_with(dq.outputs[0])
        graph.insert_before(graph.node(0), dq)
        main.initializers.pop(name)

    def _dequantize_after_lookups(self, dq: ir.Node) -> None:
        """A weight DQ read only by row lookups (Gather on axis 0 of a 2-D table) with
        per-column or per-tensor qparams moves below each of them: the Gather picks int8
        rows, which a DQ of their own dequantizes (the gathered tensor keeps its name)."""
        users = list(dq.outputs[0].uses())
        axis = dq.attributes.get_int("axis", None)
        table = dq.inputs[0]
        if (not users or axis not in (None, 1) or table.const_value is None
                or table.const_value.dtype in PACKED  # ORT's Gather takes no 4-bit tensor
                or len(table.const_value.shape) != 2
                or not all(user.op_type == "Gather" and index == 0
                           and user.attributes.get_int("axis", 0) == 0
                           and (axis is None or user.outputs[0].shape is not None)
                           for user, index in users)):
            return  # per-row scales, other readers, or a rank the DQ axis cannot name
        for gather, _ in users:
            rows = gather.outputs[0]
            readers = list(rows.uses())
            gather.replace_input_with(0, table)
            name = rows.name
            rows.name = self.names(f"{name}_quantized")
            rows.type = ir.TensorType(table.const_value.dtype)  # a new type: clones share it
            attrs = {"axis": len(rows.shape) - 1} if axis is not None else {}
            moved = ir.node("DequantizeLinear", [rows, dq.inputs[1], dq.inputs[2]],
                            attributes=attrs, name=self.names(f"{name}_DequantizeLinear"),
                            doc_string=f"{dq.doc_string}; moved below the lookup {gather.name}")
            moved.outputs[0].name = name
            moved.outputs[0].dtype = ir.DataType.FLOAT
            moved.outputs[0].shape = rows.shape
            for user, index in readers:
                user.replace_input_with(index, moved.outputs[0])
            graph = gather.graph
            graph.insert_after(gather, moved)
            for k, output in enumerate(graph.outputs):
                if output is rows:
                    graph.outputs[k] = moved.outputs[0]
        dq.graph.remove(dq, safe=True)

    def _emit_activation(self, value: ir.Value, uses: list[tuple[ir.Node, int]],
                         params: QParams, output: bool = False) -> None:
        """Insert Q -> DQ after ``value`` (in the graph it lives in) and point the planned
        consumers, and those that read only its shape, at the DQ output (a Shape left on the
        float tensor would keep ORT from fusing its producer into QLinearConv); an
        ``output`` (a graph output read quantized) hands its name to the DQ output."""
        grid = QTYPES[params.qtype]
        producer = value.producer()
        graph = producer.graph if producer is not None else value.graph
        name = value.name
        scale, zp = self._qparam_initializers(graph, name, params)
        doc = f"activation {params.qtype}; {self._describe(params)}"
        q = ir.node("QuantizeLinear", [value, scale, zp],
                    name=self.names(f"{name}_QuantizeLinear"), doc_string=doc)
        q.outputs[0].name = self.names(f"{name}_quantized")
        q.outputs[0].dtype = grid.dtype
        q.outputs[0].shape = value.shape
        dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zp],
                     name=self.names(f"{name}_DequantizeLinear"), doc_string=doc)
        dq.outputs[0].dtype = value.dtype
        dq.outputs[0].shape = value.shape
        if output:
            value.name = self.names(f"{name}_float")
            q.metadata_props[TENSOR_KEY] = name
            dq.outputs[0].name = name
            for k, graph_output in enumerate(graph.outputs):
                if graph_output is value:
                    graph.outputs[k] = dq.outputs[0]
        else:
            dq.outputs[0].name = self.names(f"{name}_dequantized")
        if producer is None:
            graph.insert_before(graph.node(0), [q, dq])
        else:
            graph.insert_after(producer, [q, dq])
        shape_reads = [(node, index) for node, index in value.uses()
                       if node.op_type in SHAPE_READERS]
        for node, index in [*uses, *shape_reads]:
            node.replace_input_with(index, dq.outputs[0])
