"""Input and output: model files, calibration data sources, ONNX Runtime sessions,
scratch folders."""
