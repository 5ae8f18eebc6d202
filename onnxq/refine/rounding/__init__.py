"""Learned rounding: block reconstruction on extracted subgraphs, evaluated with torch."""
