"""The quantized network as the runtime will compute it, for passes that measure it."""

from __future__ import annotations

import onnx_ir as ir

from onnxq.annotate import annotate
from onnxq.config import QuantConfig
from onnxq.passes.emit_qdq import EmitQDQPass
from onnxq.qparams import QParams


def quantized_copy(model: ir.Model, config: QuantConfig, activation_qparams: dict[str, QParams],
                   weight_qparams: dict[str, QParams]) -> ir.Model:
    """A copy of ``model`` with the Q/DQ nodes emission would write now; ``model`` is untouched."""
    copy = model.clone()
    EmitQDQPass(annotate(copy, config), activation_qparams, weight_qparams)(copy)
    return copy
