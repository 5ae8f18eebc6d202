"""Upgrade the default-domain opset when the chosen quantization scheme needs it."""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
from onnxscript import version_converter

from onnxq.errors import OnnxqError

logger = logging.getLogger(__name__)


class _Records(logging.Handler):
    """Keeps the converter's log records instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class OpsetUpgradePass(ir.passes.InPlacePass):
    """Convert the model to at least ``target`` (per-channel Q/DQ >= 13, int4/16-bit >= 21,
    fp4 >= 23).

    Changes: the default-domain opset import (and the IR version, to the least that opset
    needs) and the node forms that differ between versions; intermediate shapes are cleared
    for re-inference (the converter's fallback renames symbolic dims such as ``batch``).
    Never downgrades.
    """

    def __init__(self, target: int):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", 1)
        if current >= self.target:
            return ir.passes.PassResult(model, False)
        converter_log = logging.getLogger(version_converter.__name__)
        records = _Records()
        converter_log.addHandler(records)
        converter_log.propagate = False  # its "falling back to the C API" notes are not news
        try:
            version_converter.convert_version(model, self.target, fallback=True)
        finally:
            converter_log.removeHandler(records)
            converter_log.propagate = True
        failed = [r for r in records.records if "Failed to convert" in r.getMessage()]
        if failed:
            cause = failed[0].exc_info[1] if failed[0].exc_info else None
            reason = str(cause).strip().splitlines()[0][:160] if cause else "unknown reason"
            raise OnnxqError(f"cannot convert the model from opset {current} to {self.target} "
                             f"({reason}); re-export it at opset {self.target} or later")
        model.opset_imports[""] = self.target
        model.ir_version = max(model.ir_version or 0, onnx.helper.find_min_ir_version_for(
            [onnx.helper.make_opsetid("", self.target)]))  # e.g. 11 for fp4's opset 23
        outputs = set(model.graph.outputs)
        for node in model.graph:
            for value in node.outputs:
                if value not in outputs:
                    value.shape = None
        logger.info("upgraded opset %d -> %d", current, self.target)
        return ir.passes.PassResult(model, True)

    def ensures(self, model: ir.Model) -> None:
        if model.opset_imports.get("", 1) < self.target:
            raise ir.passes.PostconditionError(f"opset is still below {self.target}")
