"""Admission and flow control: saturation detectors, the probabilistic admitter, and the
queue policies flow control names (validated; queueing itself is a later slice)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from pdserve.epp.framework import Filter, Parameters, Passive, Plugin, go_duration, register
from pdserve.epp.types import Cycle, Endpoint, Request


class SaturationDetector(Plugin):
    def saturation(self, endpoints: list[Endpoint], now: float) -> float:
        """Pool saturation; >= 1 sheds sheddable requests."""
        raise NotImplementedError


class Admitter(Plugin):
    def admit(self, cycle: Cycle, endpoints: list[Endpoint]) -> str | None:
        """None to admit a sheddable request, else why it is refused (429)."""
        raise NotImplementedError


class UtilizationParams(Parameters):
    queueDepthThreshold: int = Field(5, gt=0)
    kvCacheUtilThreshold: float = Field(0.8, gt=0.0, le=1.0)
    metricsStalenessThreshold: str = "200ms"
    headroom: float = Field(0.0, ge=0.0)


@register("utilization-detector")
class UtilizationDetector(SaturationDetector, Filter):
    """Mean over endpoints of max(queue / queueDepthThreshold, kv / kvCacheUtilThreshold);
    an endpoint without fresh metrics counts 1 (fail closed), no endpoint at all is 1.
    In a profile it is also a filter, as upstream's (utilization/detector.go Filter): fresh
    endpoints under both thresholds x (1 + headroom), or all of them when none is."""

    Params = UtilizationParams
    params: UtilizationParams

    def setup(self) -> None:
        self.stale_after = go_duration(
            self.params.metricsStalenessThreshold, "metricsStalenessThreshold"
        )

    def saturation(self, endpoints: list[Endpoint], now: float) -> float:
        if not endpoints:
            return 1.0
        p, total = self.params, 0.0
        for e in endpoints:
            m = e.metrics
            if m.updated is None or now - m.updated > self.stale_after:
                total += 1.0
                continue
            total += max(m.waiting / p.queueDepthThreshold, m.kv_usage / p.kvCacheUtilThreshold)
        return total / len(endpoints)

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        p, room = self.params, 1.0 + self.params.headroom
        kept = [
            e
            for e in endpoints
            if e.metrics.updated is not None
            and cycle.now - e.metrics.updated <= self.stale_after
            and e.metrics.waiting < p.queueDepthThreshold * room
            and e.metrics.kv_usage < p.kvCacheUtilThreshold * room
        ]
        return kept or endpoints


class ConcurrencyParams(Parameters):
    concurrencyMode: Literal["requests", "tokens", "hybrid"] = "requests"
    maxConcurrency: int = Field(100, gt=0)
    maxTokenConcurrency: int = Field(1_000_000, gt=0)
    headroom: float = Field(0.0, ge=0.0)


@register("concurrency-detector")
class ConcurrencyDetector(SaturationDetector, Filter):
    """Requests (running + waiting, scraped) per endpoint over maxConcurrency, averaged.
    Token mode needs per-request token accounting the EPP does not keep. In a profile it is
    also a filter, as upstream's (concurrency/detector.go Filter): endpoints with fewer
    requests than int(maxConcurrency x (1 + headroom)); it may leave none."""

    Params = ConcurrencyParams
    params: ConcurrencyParams

    def saturation(self, endpoints: list[Endpoint], now: float) -> float:
        if not endpoints:
            return 1.0
        cap = self.params.maxConcurrency
        return sum((e.metrics.running + e.metrics.waiting) / cap for e in endpoints) / len(
            endpoints
        )

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        limit = int(self.params.maxConcurrency * (1.0 + self.params.headroom))
        return [e for e in endpoints if e.metrics.running + e.metrics.waiting < limit]

    def inert(self) -> dict[str, str]:
        out = {}
        if self.params.concurrencyMode != "requests":
            out["concurrencyMode"] = "only requests mode is implemented"
        if "maxTokenConcurrency" in self.params.model_fields_set:
            out["maxTokenConcurrency"] = "only requests mode is implemented"
        return out


class ProbabilisticParams(Parameters):
    queueDepthThreshold: int = Field(5, gt=0)
    kvCacheUtilThreshold: float = Field(0.8, gt=0.0)
    power: float = Field(5.0, gt=0.0)
    k: float = Field(300.0, gt=0.0)


@register("probabilistic-admitter")
class ProbabilisticAdmitter(Admitter):
    """A sheddable request is refused with chance min(saturation^power x k, 1), saturation
    the mean of max(queue / queueDepthThreshold, kv / kvCacheUtilThreshold)."""

    Params = ProbabilisticParams
    params: ProbabilisticParams

    def saturation(self, endpoints: list[Endpoint]) -> float:
        p = self.params
        return sum(
            max(
                e.metrics.waiting / p.queueDepthThreshold,
                e.metrics.kv_usage / p.kvCacheUtilThreshold,
            )
            for e in endpoints
        ) / len(endpoints)

    def chance(self, endpoints: list[Endpoint]) -> float:
        return min(math.pow(self.saturation(endpoints), self.params.power) * self.params.k, 1.0)

    def admit(self, cycle: Cycle, endpoints: list[Endpoint]) -> str | None:
        if not endpoints:
            return None
        sat = self.saturation(endpoints)
        prob = min(math.pow(sat, self.params.power) * self.params.k, 1.0)
        if cycle.rng.random() < prob:
            # upstream's words (probabilisticadmitter/plugin.go Admit), as the 429 says them
            return f"probabilistic-admitter: rejected, saturation={sat:.3f} prob={prob:.2f}"
        return None


class FairnessPolicy(Passive):
    pass


class OrderingPolicy(Passive):
    pass


class UsageLimitPolicy(Passive):
    pass


@register("global-strict-fairness-policy")
class GlobalStrictFairness(FairnessPolicy):
    pass


@register("round-robin-fairness-policy")
class RoundRobinFairness(FairnessPolicy):
    pass


@register("fcfs-ordering-policy")
class FCFSOrdering(OrderingPolicy):
    pass


@register("edf-ordering-policy")
class EDFOrdering(OrderingPolicy):
    pass
