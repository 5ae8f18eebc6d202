"""Bit allocation: each weight group's width chosen under a size budget, from scores taken once."""
