"""Admission: shed sheddable requests when every endpoint is saturated."""

from __future__ import annotations

from collections.abc import Callable

from pdserve.epp.types import Endpoint

# The loaded config's check (its saturation detector and admitters), installed by the server
# for the process; None keeps the built-in thresholds below.
Shed = Callable[[list[Endpoint], float], str | None]
_installed: Shed | None = None


def install(shed: Shed | None) -> None:
    global _installed
    _installed = shed


QUEUE_THRESHOLD = 5
KV_THRESHOLD = 0.8


def saturated(
    endpoints: list[Endpoint], now: float, queue: int = QUEUE_THRESHOLD, kv: float = KV_THRESHOLD
) -> bool:
    """True when a sheddable request must be refused: by the config's detector and
    admitters when one is installed, else when no endpoint has fresh metrics showing room
    (queue <= 5 and KV <= 0.8)."""
    if _installed is not None:
        return _installed(endpoints, now) is not None
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
