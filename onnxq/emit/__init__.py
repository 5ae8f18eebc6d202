"""Emit: the one pass that writes every QuantizeLinear/DequantizeLinear, and simulated copies."""
