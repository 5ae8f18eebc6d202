"""Refine: what improves the plan's numbers after calibration (ranges, pre-calibration,
the accuracy guard, bias correction, learned rounding)."""
