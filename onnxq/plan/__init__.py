"""Plan: which tensors are quantized and how (annotation, float-kept patterns), and
their qparams."""
