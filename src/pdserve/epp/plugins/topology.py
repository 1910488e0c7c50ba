"""Topology affinity, as llm-d-router v0.10's (Alpha): where each endpoint runs (host, rack,
zone, region from its pod labels), and a filter and a scorer that prefer endpoints close to
the peer an earlier P/D stage chose, so the KV transfer between them stays on the fastest
link. Without a topology-extractor in the config, or without a peer, they do nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pdserve.epp.framework import Filter, Parameters, Plugin, Ref, Scorer, register
from pdserve.epp.plugins.datalayer import Extractor
from pdserve.epp.plugins.handlers import PEER
from pdserve.epp.types import Cycle, Endpoint, Request

LEVELS = ("host", "rack", "zone", "region")  # tightest first; past the last: none
# Upstream's fixed curve, by the KV-transfer bandwidth at each level (scorer.go levelScores).
LEVEL_SCORES = (1.0, 0.20, 0.05, 0.02, 0.0)
DEFAULT_LABELS = {
    "hostname": "kubernetes.io/hostname",
    "rack": "topology.kubernetes.io/rack",
    "zone": "topology.kubernetes.io/zone",
    "region": "topology.kubernetes.io/region",
}


@dataclass(frozen=True)
class Topology:
    hostname: str
    rack: str
    zone: str
    region: str

    def level(self, other: Topology) -> int:
        """Index in LEVELS of the tightest level both share a non-empty value at; an empty
        value never matches, not even another empty one; len(LEVELS) for none."""
        pairs = zip(
            (self.hostname, self.rack, self.zone, self.region),
            (other.hostname, other.rack, other.zone, other.region),
            strict=True,
        )
        for i, (a, b) in enumerate(pairs):
            if a and a == b:
                return i
        return len(LEVELS)


class TopologyParams(Parameters):
    hostname: str = ""
    rack: str = ""
    zone: str = ""
    region: str = ""


@register("topology-extractor")
class TopologyExtractor(Extractor):
    """Each field names the pod label its value is read from (empty: the Kubernetes
    topology label). Upstream falls back to the pod's spec.hostname when the hostname label
    is absent; the endpoints here carry their pod's labels only, so there is no fallback."""

    stability = "alpha"
    Params = TopologyParams
    params: TopologyParams

    def setup(self) -> None:
        p = self.params
        self.labels = {k: getattr(p, k) or default for k, default in DEFAULT_LABELS.items()}

    def topology(self, e: Endpoint) -> Topology | None:
        """None for an endpoint with none of the labels (upstream stores no attribute)."""
        values = {k: e.labels.get(label, "") for k, label in self.labels.items()}
        return Topology(**values) if any(values.values()) else None


def bound_extractor(plugin: Plugin, plugins: dict[str, Plugin]) -> TopologyExtractor | None:
    """The named extractor, else the one under the type name; optional upstream, so none is
    added: without it, no endpoint has a topology."""
    named = plugin.refs.get("topologyProducerName")
    found = named if named is not None else plugins.get(TopologyExtractor.type_name)
    return found if isinstance(found, TopologyExtractor) else None


def peer_topology(cycle: Cycle, extractor: TopologyExtractor | None) -> Topology | None:
    peer = cycle.find(PEER)
    if extractor is None or peer is None:
        return None
    return extractor.topology(peer)


class AffinityFilterParams(Parameters):
    minAffinity: Literal["", "host", "rack", "zone", "region"] = "host"
    topologyProducerName: Annotated[str, Ref("TopologyExtractor")] = ""


@register("topology-affinity-filter")
class TopologyAffinityFilter(Filter):
    """Endpoints sharing the peer's minAffinity level or a tighter one; all of them when
    there is no peer topology or none qualifies, since a preference must never leave a
    request unroutable (filter/topologyaffinity/filter.go Filter)."""

    stability = "alpha"
    Params = AffinityFilterParams
    params: AffinityFilterParams

    def setup(self) -> None:
        self.floor = LEVELS.index(self.params.minAffinity or "host")
        self.extractor: TopologyExtractor | None = None

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        self.extractor = bound_extractor(self, plugins)

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        peer = peer_topology(cycle, self.extractor)
        if peer is None or self.extractor is None:
            return endpoints
        kept = []
        for e in endpoints:
            own = self.extractor.topology(e)
            if own is not None and peer.level(own) <= self.floor:
                kept.append(e)
        return kept or endpoints


class AffinityScorerParams(Parameters):
    topologyProducerName: Annotated[str, Ref("TopologyExtractor")] = ""


@register("topology-affinity-scorer")
class TopologyAffinityScorer(Scorer):
    """Same host 1, rack 0.2, zone 0.05, region 0.02, else 0; all 0 without a peer
    topology (scorer/topologyaffinity/scorer.go Score)."""

    stability = "alpha"
    Params = AffinityScorerParams
    params: AffinityScorerParams

    def setup(self) -> None:
        self.extractor: TopologyExtractor | None = None

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        self.extractor = bound_extractor(self, plugins)

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        peer = peer_topology(cycle, self.extractor)
        out = dict.fromkeys((e.name for e in endpoints), 0.0)
        if peer is None or self.extractor is None:
            return out
        for e in endpoints:
            own = self.extractor.topology(e)
            if own is not None:
                out[e.name] = LEVEL_SCORES[peer.level(own)]
        return out
