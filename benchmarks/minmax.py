"""The one way the benchmarks print a figure measured in several rounds: its min-max."""

from __future__ import annotations


def span(values: list[float], fmt: str) -> str:
    """``lo-hi`` in ``fmt`` (one value when there was one round)."""
    lo, hi = min(values), max(values)
    return format(lo, fmt) if len(values) == 1 else f"{lo:{fmt}}-{hi:{fmt}}"
