"""Shape inference that keeps going on dynamic dims and unknown ops."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

logger = logging.getLogger(__name__)


class TolerantShapeInferencePass(ir.passes.InPlacePass):
    """Run ONNX shape inference non-strictly; on failure keep the shapes already known.

    Changes: value types and shapes only.  Symbolic (dynamic) dims stay symbolic;
    a model that ONNX's inference rejects (custom ops, inconsistent annotations)
    is returned unchanged with a warning instead of an error.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            result = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and others
            logger.warning("shape inference skipped: %s", str(exc).splitlines()[0])
            return ir.passes.PassResult(model, False)
        return ir.passes.PassResult(result.model, result.modified)
