"""Prepare: the FP32 graph passes run before annotation (clean-up, fusion, equalization,
opset upgrade)."""
