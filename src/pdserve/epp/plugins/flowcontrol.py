"""Admission and flow control's plugins: saturation detectors, the probabilistic admitter,
and the fairness and ordering policies of flow control's priority bands (flow_control.py)."""

from __future__ import annotations

import math
from typing import Literal, Protocol

from pydantic import Field

from pdserve.epp.framework import Filter, Parameters, Passive, Plugin, go_duration, register
from pdserve.epp.types import Cycle, Endpoint, Request


class SaturationDetector(Plugin):
    """Pool saturation gates flow control's dispatch (and sheds sheddable requests when flow
    control is off); an endpoint's own saturation past 1 + headroom keeps it out of routing
    while flow control is on."""

    headroom: float = 0.0

    def load(self, endpoint: Endpoint, now: float) -> float:
        """One endpoint's saturation: 1 is full."""
        raise NotImplementedError

    def saturation(self, endpoints: list[Endpoint], now: float) -> float:
        """The mean of the endpoints' loads; no endpoint at all is saturated."""
        if not endpoints:
            return 1.0
        return sum(self.load(e, now) for e in endpoints) / len(endpoints)

    def has_room(self, endpoint: Endpoint, now: float) -> bool:
        return self.load(endpoint, now) < 1.0 + self.headroom


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
    """max(queue / queueDepthThreshold, kv / kvCacheUtilThreshold) per endpoint, an endpoint
    without fresh metrics counting 1 (fail closed). The queue counts the requests this EPP
    sent since the last scrape as waiting, so a burst between scrapes cannot overshoot.
    In a profile it is also a filter, as upstream's (utilization/detector.go Filter): fresh
    endpoints under both thresholds x (1 + headroom), or all of them when none is."""

    Params = UtilizationParams
    params: UtilizationParams

    def setup(self) -> None:
        self.stale_after = go_duration(
            self.params.metricsStalenessThreshold, "metricsStalenessThreshold"
        )
        self.headroom = self.params.headroom

    def load(self, endpoint: Endpoint, now: float) -> float:
        m, p = endpoint.metrics, self.params
        if m.updated is None or now - m.updated > self.stale_after:
            return 1.0
        return max(
            (m.waiting + m.dispatched) / p.queueDepthThreshold,
            m.kv_usage / p.kvCacheUtilThreshold,
        )

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
    inFlightLoadProducerName: str = ""


@register("concurrency-detector")
class ConcurrencyDetector(SaturationDetector, Filter):
    """Requests per endpoint (running + waiting as scraped, plus those this EPP sent since)
    over maxConcurrency. Token mode needs per-request token accounting the EPP does not keep.
    In a profile it is also a filter, as upstream's (concurrency/detector.go Filter):
    endpoints with fewer requests than int(maxConcurrency x (1 + headroom)); it may leave
    none."""

    Params = ConcurrencyParams
    params: ConcurrencyParams

    def setup(self) -> None:
        self.headroom = self.params.headroom

    def load(self, endpoint: Endpoint, now: float) -> float:
        m = endpoint.metrics
        return (m.running + m.waiting + m.dispatched) / self.params.maxConcurrency

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        limit = int(self.params.maxConcurrency * (1.0 + self.params.headroom))
        return [e for e in endpoints if e.metrics.running + e.metrics.waiting < limit]

    def inert(self) -> dict[str, str]:
        out = {}
        if self.params.concurrencyMode != "requests":
            out["concurrencyMode"] = "only requests mode is implemented"
        if "maxTokenConcurrency" in self.params.model_fields_set:
            out["maxTokenConcurrency"] = "only requests mode is implemented"
        if self.params.inFlightLoadProducerName:
            out["inFlightLoadProducerName"] = (
                "in-flight requests are counted from scrapes and this EPP's own dispatches"
            )
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


class Queued(Protocol):
    """What the policies read of a queued request (flow_control.Item)."""

    @property
    def seq(self) -> int: ...
    @property
    def enqueued(self) -> float: ...
    @property
    def deadline(self) -> float: ...


class OrderingPolicy(Passive):
    """Which request of one flow goes first: a sort key, smallest first."""

    def key(self, item: Queued) -> tuple[float, int]:
        raise NotImplementedError


class FairnessPolicy(Passive):
    """Which flow of a band is served next, given each non-empty flow's head."""

    def pick(self, heads: dict[str, tuple[float, int]], last: str | None) -> str:
        raise NotImplementedError


class UsageLimitPolicy(Passive):
    """How saturated the pool may be before queued requests wait (upstream's per-band
    ceilings; the gate here holds the queue as one, so one ceiling for all bands)."""

    def ceiling(self, saturation: float) -> float:
        raise NotImplementedError


class StaticUsageLimitParams(Parameters):
    threshold: float = 1.0


@register("static-usage-limit-policy")
class StaticUsageLimitPolicy(UsageLimitPolicy):
    """Every band's ceiling is `threshold`: queued requests are dispatched while saturation
    is under it (usagelimits/usagelimitpolicy.go, upstream's default at 1.0)."""

    Params = StaticUsageLimitParams
    params: StaticUsageLimitParams

    def ceiling(self, saturation: float) -> float:
        return self.params.threshold


@register("global-strict-fairness-policy")
class GlobalStrictFairness(FairnessPolicy):
    """The band behaves as one queue: the flow whose head comes first by the ordering."""

    def pick(self, heads: dict[str, tuple[float, int]], last: str | None) -> str:
        return min(heads, key=heads.__getitem__)


@register("round-robin-fairness-policy")
class RoundRobinFairness(FairnessPolicy):
    """Flows take turns, in the order of their names, after the one served last."""

    def pick(self, heads: dict[str, tuple[float, int]], last: str | None) -> str:
        names = sorted(heads)
        if last is None:
            return names[0]
        return next((n for n in names if n > last), names[0])


@register("fcfs-ordering-policy")
class FCFSOrdering(OrderingPolicy):
    def key(self, item: Queued) -> tuple[float, int]:
        return (item.enqueued, item.seq)


@register("edf-ordering-policy")
class EDFOrdering(OrderingPolicy):
    """Earliest deadline (arrival plus the request's TTL) first."""

    def key(self, item: Queued) -> tuple[float, int]:
        return (item.deadline, item.seq)
