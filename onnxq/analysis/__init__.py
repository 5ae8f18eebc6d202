"""Analysis: compare, time, inspect and check quantized models."""
