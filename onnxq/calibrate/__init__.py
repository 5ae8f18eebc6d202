"""Calibrate: stream calibration data through ONNX Runtime and reduce statistics on the fly."""
