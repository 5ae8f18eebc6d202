"""Compute a float16 model in float32 inside, keeping its float16 inputs and outputs."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

_F16, _F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT
_DTYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype",
                     "RandomUniform": "dtype", "RandomNormalLike": "dtype",
                     "RandomUniformLike": "dtype", "Multinomial": "dtype"}


def _as_float32(tensor: ir.TensorProtocol) -> ir.Tensor:
    return ir.tensor(tensor.numpy().astype(np.float32), name=tensor.name)


class Float16ToFloat32Pass(ir.passes.InPlacePass):
    """Turn float16 tensors into float32, with Casts at the float16 graph inputs and outputs.

    Changes: float16 initializers, tensor attributes (Constant, ConstantOfShape) and value
    types become float32, and so do float16 targets of Cast/EyeLike/Random*; each float16
    graph input is cast to float32 after it and each float16 graph output back to float16
    before it, so the model's interface is unchanged.  Quantized kernels compute in integer
    either way, and QuantizeLinear below opset 19 takes no float16 input.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        f16_outputs = [i for i, value in enumerate(graph.outputs) if value.dtype == _F16]
        f16_inputs = [value for value in graph.inputs if value.dtype == _F16]
        modified = self._convert_tensors(model)
        for value in f16_inputs:
            uses = list(value.uses())
            cast = ir.node("Cast", [value], attributes={"to": _F32},
                           name=f"{value.name}_to_float32")
            cast.outputs[0].name = f"{value.name}_float32"
            cast.outputs[0].dtype, cast.outputs[0].shape = _F32, value.shape
            for user, index in uses:
                user.replace_input_with(index, cast.outputs[0])
            if len(graph):
                graph.insert_before(graph.node(0), cast)
            else:
                graph.append(cast)
        for index in f16_outputs:
            value = graph.outputs[index]
            name = value.name
            value.name = f"{name}_float32"
            cast = ir.node("Cast", [value], attributes={"to": _F16}, name=f"{name}_to_float16")
            cast.outputs[0].name = name
            cast.outputs[0].dtype, cast.outputs[0].shape = _F16, value.shape
            graph.append(cast)
            graph.outputs[index] = cast.outputs[0]
        if modified or f16_inputs or f16_outputs:
            logger.info("float16 model computed in float32 (interface kept float16)")
            return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)

    @staticmethod
    def _convert_tensors(model: ir.Model) -> bool:
        """Everything but the main graph's inputs (those keep float16 behind a Cast)."""
        modified = False
        for graph in model.graphs():
            for value in graph.initializers.values():
                if value.dtype == _F16 and value.const_value is not None:
                    value.const_value = _as_float32(value.const_value)
                    value.dtype = _F32
                    modified = True
            inputs = graph.inputs if graph is not model.graph else []
            for value in [*inputs, *(out for node in graph for out in node.outputs)]:
                if value.dtype == _F16:
                    value.dtype = _F32
                    modified = True
            for node in graph:
                modified |= _convert_attributes(node)
        return modified


def _convert_attributes(node: ir.Node) -> bool:
    modified = False
    for name, attr in list(node.attributes.items()):
        if attr.type == ir.AttributeType.TENSOR and attr.value.dtype == _F16:
            node.attributes[name] = ir.AttrTensor(name, _as_float32(attr.value))
            modified = True
        elif (name == _DTYPE_ATTRIBUTES.get(node.op_type)
              and attr.type == ir.AttributeType.INT and attr.value == _F16):
            node.attributes[name] = ir.AttrInt64(name, int(_F32))
            modified = True
    return modified
