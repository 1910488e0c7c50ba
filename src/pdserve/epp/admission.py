"""Admission: shed sheddable requests when every endpoint is saturated."""

from __future__ import annotations

from pdserve.epp.types import Endpoint

QUEUE_THRESHOLD = 5
KV_THRESHOLD = 0.8


def saturated(
    endpoints: list[Endpoint], now: float, queue: int = QUEUE_THRESHOLD, kv: float = KV_THRESHOLD
) -> bool:
    """True when no endpoint has fresh metrics showing room (queue <= 5 and KV <= 0.8): the
    check of a config without a saturation detector or admitters (extproc.Picker)."""
    return not any(
        e.metrics.fresh(now) and e.metrics.waiting <= queue and e.metrics.kv_usage <= kv
        for e in endpoints
    )


CRITICALITY_PRIORITY = {"Critical": 1, "Standard": 0, "Sheddable": -1}


def priority(criticality: str | None, objective_priority: str | None = None) -> int:
    """From the InferenceObjective priority (an integer) or the legacy criticality name."""
    if objective_priority:
        try:
            return int(objective_priority)
        except ValueError:
            pass
    return CRITICALITY_PRIORITY.get(criticality or "Critical", 1)
