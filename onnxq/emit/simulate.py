"""The quantized network as the runtime will compute it, for passes that measure it."""

from __future__ import annotations

import onnx_ir as ir

from onnxq.emit.qdq import EmitQDQPass
from onnxq.plan.qparams import QParams
from onnxq.spec import QuantPlan


def quantized_copy(model: ir.Model, plan: QuantPlan, activation_qparams: dict[str, QParams],
                   weight_qparams: dict[str, QParams]) -> ir.Model:
    """A copy of ``model`` with the Q/DQ nodes emission would write now for ``plan``;
    ``model`` is untouched."""
    copy = model.clone()
    EmitQDQPass(plan.bind(copy), activation_qparams, weight_qparams)(copy)
    return copy
