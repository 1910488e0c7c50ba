"""Percentiles without numpy on the client (numpy's default linear interpolation)."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float | None:
    """None for no values: a report says "nothing measured", not 0."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {f"p{p}": _rounded(percentile(ordered, p)) for p in (50, 90, 99)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
