"""Load and affinity scorers over the endpoints' scraped metrics (passed in, never fetched)."""

from __future__ import annotations

import base64

from pdserve.epp.framework import ConfigError, Scorer, register
from pdserve.epp.types import Cycle, Endpoint, Request
from pdserve.wire import SESSION_HEADER


def min_max(values: dict[str, float], lower_is_better: bool = True) -> dict[str, float]:
    """Normalise to [0, 1]; all equal gives every endpoint 1."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi == lo:
        return dict.fromkeys(values, 1.0)
    span = hi - lo
    return {k: ((hi - v) if lower_is_better else (v - lo)) / span for k, v in values.items()}


@register("load-aware-scorer")
class LoadAwareScorer(Scorer):
    """An empty queue scores 0.5; a queue of q scores 0.5 x (1 - min(q, threshold)/threshold)."""

    defaults = {"threshold": 128}

    def setup(self) -> None:
        self.threshold = self.number("threshold", 1)

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        thr = self.threshold
        out = {}
        for e in endpoints:
            q = e.metrics.waiting
            out[e.name] = 0.5 if q == 0 else 0.5 * (1 - min(q, thr) / thr)
        return out


@register("queue-scorer")
class QueueScorer(Scorer):
    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        return min_max({e.name: e.metrics.waiting for e in endpoints})


@register("kv-cache-utilization-scorer", "kv-cache-scorer")
class KVCacheUtilizationScorer(Scorer):
    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        return {e.name: 1.0 - e.metrics.kv_usage for e in endpoints}


@register("active-request-scorer")
class ActiveRequestScorer(Scorer):
    """Fewer requests in flight (running on the engine) is better."""

    defaults = {"requestTimeout": "2m"}

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        return min_max({e.name: e.metrics.running for e in endpoints})


@register("session-affinity-scorer")
class SessionAffinityScorer(Scorer):
    """The endpoint named by the x-session-token header (base64 of address:port) scores 1."""

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        token = req.headers.get(SESSION_HEADER, "")
        try:
            target = base64.b64decode(token).decode() if token else ""
        except (ValueError, UnicodeDecodeError):
            target = ""
        return {e.name: 1.0 if e.name == target else 0.0 for e in endpoints}


@register("lora-affinity-scorer")
class LoRAAffinityScorer(Scorer):
    """1 where the adapter is already loaded, 0.8 where it is queued, 0.5 where there is room
    for one more, else 0 (the idea of GIE's LoRA affinity)."""

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        out = {}
        for e in endpoints:
            m = e.metrics
            if req.model in m.loras_running:
                out[e.name] = 1.0
            elif req.model in m.loras_waiting:
                out[e.name] = 0.8
            elif m.max_loras == 0 or len(m.loras_running) < m.max_loras:
                out[e.name] = 0.5
            else:
                out[e.name] = 0.0
        return out


def _check_block_size(scorer: Scorer, key: str = "hashBlockSize") -> int:
    value = scorer.params[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"parameter {key}: must be a positive integer, got {value!r}")
    return value
