"""Admission: shed sheddable requests when every endpoint is saturated."""

from __future__ import annotations

from collections.abc import Mapping

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


def priority(
    criticality: str | None,
    legacy_priority: str | None = None,
    objective: str = "",
    objectives: Mapping[str, int] | None = None,
) -> int:
    """The request's InferenceObjective's priority when it names one (0 for one not known,
    as upstream); else the legacy priority header or criticality name; else 0."""
    if objective:
        return (objectives or {}).get(objective, 0)
    if legacy_priority:
        try:
            return int(legacy_priority)
        except ValueError:
            pass
    return CRITICALITY_PRIORITY.get(criticality, 0) if criticality else 0
