"""Per-layer report of a QDQ model against its FP32 source (``onnxq report``)."""
