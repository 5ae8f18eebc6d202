"""The numeric core: integer grids, qparams, fake quantization, and the calibration observers."""
