"""Filters: which endpoints a profile may pick from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from pdserve.epp.framework import ConfigError, Filter, Parameters, Plugin, Ref, register
from pdserve.epp.plugins.inflight import InFlightLoadProducer, bound_in_flight
from pdserve.epp.plugins.prefix import PrefixProducer, default_producer, held
from pdserve.epp.types import Cycle, Endpoint, Request
from pdserve.wire import ROLE_BOTH, ROLE_DECODE, ROLE_LABEL, ROLE_PREFILL

# The role values each stage's filter keeps, as upstream's (bylabel/roles.go, v0.7 to v0.10):
# pdserve labels pods prefill, decode or both; the combined roles come from other deployers.
DECODE_ROLES = frozenset({None, ROLE_DECODE, ROLE_BOTH, "prefill-decode", "encode-prefill-decode"})
ENCODE_ROLES = frozenset({"encode", "encode-prefill", "encode-prefill-decode"})


@register("decode-filter")
class DecodeFilter(Filter):
    """Decode-capable pods; a pod without the role label counts as both."""

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role in DECODE_ROLES]


@register("prefill-filter")
class PrefillFilter(Filter):
    """Prefill pods only. Upstream (since v0.7) also keeps both, prefill-decode and the
    encode-prefill roles; under `pdserve up` a pod labelled both runs without a KV connector
    and is not among the sidecar's allowed prefill targets, so choosing it would fail the
    request (a divergence kept on purpose until aggregated pods can prefill)."""

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role == ROLE_PREFILL]


@register("encode-filter")
class EncodeFilter(Filter):
    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.role in ENCODE_ROLES]


class ByLabelParams(Parameters):
    label: str = ROLE_LABEL
    validValues: list[str] = Field(default_factory=list)
    allowsNoLabel: bool = False


@register("by-label")
class ByLabel(Filter):
    """Deprecated since v0.9 for label-selector-filter."""

    Params = ByLabelParams
    params: ByLabelParams

    def setup(self) -> None:
        """As upstream's factory (bylabel/filter.go): a filter that could keep nothing."""
        if not self.params.validValues and not self.params.allowsNoLabel:
            raise ConfigError(
                "parameters: either validValues must be non-empty or allowsNoLabel must be true"
            )

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        valid = set(p.validValues)
        return [
            e
            for e in endpoints
            if e.labels.get(p.label) in valid or (p.label not in e.labels and p.allowsNoLabel)
        ]


class Requirement(BaseModel):
    model_config = Parameters.model_config
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class SelectorParams(Parameters):
    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[Requirement] = Field(default_factory=list)


def matches(sel: SelectorParams, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector: every matchLabels pair and every requirement."""
    if any(labels.get(k) != v for k, v in sel.matchLabels.items()):
        return False
    for r in sel.matchExpressions:
        present = r.key in labels
        if (
            (r.operator == "In" and labels.get(r.key) not in r.values)
            or (r.operator == "NotIn" and present and labels[r.key] in r.values)
            or (r.operator == "Exists" and not present)
            or (r.operator == "DoesNotExist" and present)
        ):
            return False
    return True


@register("label-selector-filter", "by-label-selector")
class LabelSelectorFilter(Filter):
    Params = SelectorParams
    params: SelectorParams

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if matches(self.params, e.labels)]


class Condition(BaseModel):
    model_config = Parameters.model_config
    metric: Literal["active-requests", "running-requests", "waiting-queue", "kv-cache-utilization"]
    maxValue: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _fraction(self) -> Condition:
        """KV-cache utilization is a fraction: a maxValue over 1 is a percentage mistaken."""
        if self.metric == "kv-cache-utilization" and self.maxValue > 1:
            raise ValueError("maxValue for kv-cache-utilization is a fraction, at most 1")
        return self


class UtilizationFilterParams(Parameters):
    conditions: list[Condition] = Field(min_length=1)
    fallbackOnEmpty: bool = False
    inFlightLoadProducerName: str = ""


@register("utilization-filter")
class UtilizationFilter(Filter):
    """Endpoints whose every metric is at most its maxValue; none left gives them all back
    only with fallbackOnEmpty. As upstream's (filter/utilization/filter.go, alpha), except
    that active-requests is the engine's running count here (the EPP keeps no in-flight
    count of its own), as active-request-scorer reads it."""

    stability = "alpha"
    Params = UtilizationFilterParams
    params: UtilizationFilterParams

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        kept = [e for e in endpoints if all(self._within(e, c) for c in self.params.conditions)]
        return endpoints if not kept and self.params.fallbackOnEmpty else kept

    @staticmethod
    def _within(e: Endpoint, c: Condition) -> bool:
        m = e.metrics
        value = {
            "active-requests": m.running,
            "running-requests": m.running,
            "waiting-queue": m.waiting,
            "kv-cache-utilization": m.kv_usage,
        }[c.metric]
        return value <= c.maxValue

    def inert(self) -> dict[str, str]:
        if self.params.inFlightLoadProducerName:
            return {"inFlightLoadProducerName": "active-requests is the engine's running count"}
        return {}


class AffinityParams(Parameters):
    affinityThreshold: float = Field(0.80, le=1.0)
    explorationProbability: float = Field(0.0, ge=0.0, le=1.0)
    maxTTFTPenaltyMs: float = Field(18000.0, ge=0.0)
    ttftSource: Literal["prefillThroughput", "latencyPredictor"] = "prefillThroughput"
    peakPrefillThroughput: float = Field(15928.0, ge=0.0)  # tokens/s, upstream's calibration
    prefixMatchInfoProducerName: Annotated[str, Ref("PrefixProducer")] = ""
    latencyPredictionInfoProducerName: str = ""
    inFlightLoadProducerName: Annotated[str, Ref("InFlightLoadProducer")] = ""

    @model_validator(mode="after")
    def _throughput(self) -> AffinityParams:
        """As upstream's validate: a throughput gate that is on needs a throughput."""
        src = self.ttftSource
        gate = src == "prefillThroughput" and self.maxTTFTPenaltyMs > 0
        if gate and self.peakPrefillThroughput == 0:
            raise ValueError("peakPrefillThroughput must be > 0 when ttftSource is " + repr(src))
        return self


@register("prefix-cache-affinity-filter")
class PrefixCacheAffinityFilter(Filter):
    """Keeps the endpoints whose prefix match (matched / total blocks) reaches
    affinityThreshold, unless none does, a coin with explorationProbability says explore, or
    the best sticky one's TTFT (in-flight tokens / peakPrefillThroughput) is more than
    maxTTFTPenaltyMs behind the best other's (filter/prefixcacheaffinity/plugin.go Filter)."""

    Params = AffinityParams
    params: AffinityParams

    def setup(self) -> None:
        self.prefix: PrefixProducer | None = None
        self.load: InFlightLoadProducer | None = None

    @property
    def gated_by_load(self) -> bool:
        p = self.params
        return p.maxTTFTPenaltyMs > 0 and p.ttftSource == "prefillThroughput"

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        """Both inputs are required upstream, so their default producers join the config."""
        named = self.refs.get("prefixMatchInfoProducerName")
        self.prefix = named if isinstance(named, PrefixProducer) else default_producer(plugins)
        if self.gated_by_load:
            self.load = bound_in_flight(self, plugins)

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        if len(endpoints) <= 1 or p.affinityThreshold <= 0 or self.prefix is None:
            return endpoints
        # Upstream draws on every call; drawing only when exploring keeps a seeded cycle's
        # other draws (the pickers') where they were.
        if p.explorationProbability > 0 and cycle.rng.random() < p.explorationProbability:
            return endpoints
        src = self.prefix
        m = src.match(cycle, req)
        sticky: list[Endpoint] = []
        other: list[Endpoint] = []
        for e in endpoints:
            score = held(src, m, e) / m.total if m.total > 0 else 0.0
            (sticky if score >= p.affinityThreshold else other).append(e)
        if not sticky:
            return endpoints
        behind = self._best_ttft(sticky) - self._best_ttft(other) if other else 0.0
        if p.maxTTFTPenaltyMs > 0 and behind > p.maxTTFTPenaltyMs:
            return endpoints
        return sticky

    def _best_ttft(self, endpoints: list[Endpoint]) -> float:
        """Milliseconds; with the latency predictor, which is not here, every endpoint has
        none (upstream's MaxFloat64), so the gate never breaks."""
        if self.load is None:
            return float("inf")
        peak = self.params.peakPrefillThroughput
        return min(self.load.in_flight(e.name)[1] for e in endpoints) / peak * 1000

    def inert(self) -> dict[str, str]:
        p, out = self.params, {}
        if p.ttftSource == "latencyPredictor" and p.maxTTFTPenaltyMs > 0:
            out["ttftSource"] = "no predicted-latency-producer here: the TTFT gate never breaks"
        if p.latencyPredictionInfoProducerName:
            out["latencyPredictionInfoProducerName"] = "no predicted-latency-producer here"
        if not self.gated_by_load:
            if "peakPrefillThroughput" in p.model_fields_set:
                out["peakPrefillThroughput"] = "only the prefillThroughput TTFT gate uses it"
            if p.inFlightLoadProducerName:
                out["inFlightLoadProducerName"] = "only the prefillThroughput TTFT gate uses it"
        return out
