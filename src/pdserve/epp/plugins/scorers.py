"""Load and affinity scorers over the endpoints' scraped metrics (passed in, never fetched)."""

from __future__ import annotations

import base64
import re
from collections import OrderedDict
from typing import Annotated

from pydantic import Field

from pdserve.epp.framework import (
    ConfigError,
    Filter,
    Parameters,
    Plugin,
    PreRequest,
    Ref,
    Scorer,
    register,
)
from pdserve.epp.plugins.prefix import PrefixProducer, default_producer, estimated_tokens, held
from pdserve.epp.types import Cycle, Endpoint, Request, Result, StateKey
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


LOAD_AWARE_THRESHOLD = 128


class LoadAwareParams(Parameters):
    # Any integer, as upstream (load_aware.go NewLoadAware): <= 0 loads and means the default.
    threshold: int = LOAD_AWARE_THRESHOLD


@register("load-aware-scorer")
class LoadAwareScorer(Scorer):
    """An empty queue scores 0.5; a queue of q scores 0.5 x (1 - min(q, threshold)/threshold)."""

    Params = LoadAwareParams
    params: LoadAwareParams

    @property
    def threshold(self) -> int:
        return self.params.threshold if self.params.threshold > 0 else LOAD_AWARE_THRESHOLD

    def inert(self) -> dict[str, str]:
        if self.params.threshold <= 0:
            return {"threshold": f"not positive: the default {LOAD_AWARE_THRESHOLD} is used"}
        return {}

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


@register("running-requests-size-scorer")
class RunningRequestsSizeScorer(Scorer):
    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        return min_max({e.name: e.metrics.running for e in endpoints})


@register("kv-cache-utilization-scorer", "kv-cache-scorer")
class KVCacheUtilizationScorer(Scorer):
    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        return {e.name: 1.0 - e.metrics.kv_usage for e in endpoints}


class ActiveRequestParams(Parameters):
    requestTimeout: str = ""  # deprecated upstream (its in-flight producer owns timeouts)
    # Out-of-range values load as the defaults, as upstream (active_request.go
    # NewActiveRequest): a negative idleThreshold is 0, a maxBusyScore outside [0, 1] is 1.
    idleThreshold: int = 0
    maxBusyScore: float = 1.0
    inFlightLoadProducerName: str = ""


@register("active-request-scorer")
class ActiveRequestScorer(Scorer):
    """Requests running on each engine (scraped): at most idleThreshold scores 1, else
    (max - n) / max x maxBusyScore."""

    Params = ActiveRequestParams
    params: ActiveRequestParams

    def setup(self) -> None:
        p = self.params
        self.idle = max(p.idleThreshold, 0)
        self.busy = p.maxBusyScore if 0.0 <= p.maxBusyScore <= 1.0 else 1.0

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        top = max((e.metrics.running for e in endpoints), default=0)
        out = {}
        for e in endpoints:
            n = e.metrics.running
            out[e.name] = 1.0 if n <= self.idle else (top - n) / top * self.busy
        return out

    def inert(self) -> dict[str, str]:
        out = {}
        if self.params.idleThreshold < 0:
            out["idleThreshold"] = "negative: 0 is used, as upstream"
        if self.busy != self.params.maxBusyScore:
            out["maxBusyScore"] = "outside [0, 1]: 1.0 is used, as upstream"
        if self.params.requestTimeout:
            out["requestTimeout"] = "counts are the engine's own, nothing times out here"
        if self.params.inFlightLoadProducerName:
            out["inFlightLoadProducerName"] = "counts are the engine's running requests"
        return out


def session_target(req: Request) -> str:
    """The endpoint the x-session-token header names (base64 of address:port), or ""."""
    token = req.headers.get(SESSION_HEADER, "")
    try:
        return base64.b64decode(token).decode() if token else ""
    except (ValueError, UnicodeDecodeError):
        return ""


class SessionIDParams(Parameters):
    headerName: str = ""
    cookieName: str = ""


@register("session-id-producer")
class SessionIDProducer(Plugin):
    """The request's session id, from a header (its name lowered) or a cookie of the Cookie
    header, trimmed; "" when absent (dataproducer/sessionid). v0.10 has no plugin reading
    it yet, so it only loads and answers `session_id`, as upstream's only publishes it."""

    Params = SessionIDParams
    params: SessionIDParams

    def setup(self) -> None:
        self.header = self.params.headerName.strip().lower()
        self.cookie = self.params.cookieName.strip()
        if bool(self.header) == bool(self.cookie):
            raise ConfigError("parameters: exactly one of headerName or cookieName must be set")

    def session_id(self, req: Request) -> str:
        if self.header:
            return req.headers.get(self.header, "").strip()
        for pair in req.headers.get("cookie", "").split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == self.cookie:
                return value.strip()
        return ""


@register("session-affinity-scorer")
class SessionAffinityScorer(Scorer):
    """The endpoint named by the x-session-token header (base64 of address:port) scores 1."""

    stability = "alpha"

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        target = session_target(req)
        return {e.name: 1.0 if e.name == target else 0.0 for e in endpoints}


@register("session-affinity-filter")
class SessionAffinityFilter(Filter):
    """Only the endpoint the x-session-token header names, when it is a candidate; else all
    (upstream's encoded-endpoint-header strategy, filter/sessionaffinity, alpha)."""

    stability = "alpha"

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        target = session_target(req)
        named = [e for e in endpoints if e.name == target] if target else []
        return named[:1] or endpoints


@register("lora-affinity-scorer")
class LoRAAffinityScorer(Scorer):
    """1 where the adapter is active, 0.8 where there is room for one more, 0.6 where it is
    waiting, else 0 (upstream's order: room beats waiting)."""

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        out = {}
        for e in endpoints:
            m = e.metrics
            if req.model in m.loras_running:
                out[e.name] = 1.0
            elif len(m.loras_running) + len(m.loras_waiting) < m.max_loras:
                out[e.name] = 0.8
            elif req.model in m.loras_waiting:
                out[e.name] = 0.6
            else:
                out[e.name] = 0.0
        return out


class NoHitLRUParams(Parameters):
    prefixPluginType: str = ""
    prefixPluginName: str = ""
    lruSize: int = Field(1024, ge=0)
    prefixMatchInfoProducerName: Annotated[str, Ref("PrefixProducer")] = ""


@register("no-hit-lru-scorer")
class NoHitLRUScorer(Scorer, PreRequest):
    """For a prompt no endpoint has cached (cold), spread by recency: endpoints never used
    first, then the least recently used; a warm prompt scores 0.5 everywhere. As upstream
    (no_hit_lru.go, v0.10 to main): a used endpoint's rank is its place in the whole LRU, not
    among the candidates, and the picks recorded are the primary profile's and the one of a
    profile named "prefill" (upstream's hard-coded defaultPrefillProfile)."""

    Params = NoHitLRUParams
    params: NoHitLRUParams

    def setup(self) -> None:
        self.lru: OrderedDict[str, None] = OrderedDict()  # oldest first
        self.producer: PrefixProducer | None = None
        # Whether this cycle's prompt was cold, from score() to pre_request().
        self.cold_key = StateKey[bool](f"no-hit-lru.cold.{self.name}")

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        named = self.refs.get("prefixMatchInfoProducerName")
        self.producer = named if isinstance(named, PrefixProducer) else default_producer(plugins)

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        src = self.producer
        m = src.match(cycle, req) if src is not None else None
        cold = m is None or not any(held(src, m, e) for e in endpoints if src is not None)
        cycle.put(self.cold_key, cold)
        if not cold:
            return dict.fromkeys((e.name for e in endpoints), 0.5)
        n = len(endpoints)
        if n == 1:
            return {endpoints[0].name: 1.0}
        position = {name: i for i, name in enumerate(self.lru)}
        never = [e for e in endpoints if e.name not in position]
        out = {e.name: 1.0 - i / (n - 1) for i, e in enumerate(never)}
        for e in endpoints:
            if e.name in position:
                out[e.name] = max(1.0 - (len(never) + position[e.name]) / (n - 1), 0.0)
        return out

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        if not cycle.get(self.cold_key, False):
            return
        for profile in (result.primary, "prefill"):
            chosen = result.profiles.get(profile)
            if chosen is not None and chosen.endpoint is not None:
                self.lru.pop(chosen.endpoint.name, None)
                self.lru[chosen.endpoint.name] = None
                if len(self.lru) > (self.params.lruSize or 1024):
                    self.lru.popitem(last=False)

    def inert(self) -> dict[str, str]:
        why = "upstream ignores it too since v0.9; use prefixMatchInfoProducerName"
        return {k: why for k in ("prefixPluginType", "prefixPluginName") if getattr(self.params, k)}


CONTEXT_LABEL = "llm-d.ai/context-length-range"
_RANGE = re.compile(r"\s*\+?(\d+)\s*-\s*\+?(\d+)\s*")


class ContextLengthParams(Parameters):
    label: str = Field(CONTEXT_LABEL, min_length=1)
    enableFiltering: bool = False


def context_range(text: str) -> tuple[int, int] | None:
    """A `min-max` label value (strconv.Atoi on each side, as upstream); None if malformed."""
    m = _RANGE.fullmatch(text)
    if m is None or int(m[1]) > int(m[2]):
        return None
    return int(m[1]), int(m[2])


def range_score(tokens: int, lo: int, hi: int) -> float:
    """Inside the range: 0.3 + 0.7 x (0.7 x narrowness + 0.3 x headroom); outside: 0.3 decaying
    with the distance in thousands of tokens (context_length_aware.go calculateRangeScore)."""
    if lo <= tokens <= hi:
        width = hi - lo
        if width == 0:
            return 1.0
        raw = 0.7 / (1.0 + width / 10000.0) + 0.3 * (hi - tokens) / width
        return 0.3 + raw * 0.7
    distance = tokens - hi if tokens > hi else lo - tokens
    return 0.3 / (1.0 + distance / 1000.0)


@register("context-length-aware")
class ContextLengthAware(Scorer, Filter):
    """Prefers pods whose context-length-range label holds the prompt's (estimated) tokens,
    and with enableFiltering keeps only those and unlabelled pods. Unlabelled scores 0.5, a
    malformed label 0 (and is filtered out), as upstream's."""

    Params = ContextLengthParams
    params: ContextLengthParams

    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        if not self.params.enableFiltering:
            return endpoints
        tokens, out = estimated_tokens(req.prompt), []
        for e in endpoints:
            text = e.labels.get(self.params.label)
            if text is None:  # unlabelled pods serve any length
                out.append(e)
                continue
            r = context_range(text)
            if r is not None and r[0] <= tokens <= r[1]:
                out.append(e)
        return out

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        tokens, out = estimated_tokens(req.prompt), {}
        for e in endpoints:
            text = e.labels.get(self.params.label)
            r = context_range(text) if text is not None else None
            if text is None:
                out[e.name] = 0.5
            else:
                out[e.name] = 0.0 if r is None else range_score(tokens, *r)
        return out


class HeaderLabelParams(Parameters):
    headerName: str = Field(min_length=1)
    labelKey: str = Field(min_length=1)


@register("header-label-affinity-scorer")
class HeaderLabelAffinityScorer(Scorer):
    """1 where the endpoint's labelKey label equals the request's headerName header, else 0,
    and 0 everywhere without the header: a soft preference, no endpoint is removed
    (scorer/headerlabelaffinity, alpha). Header names compare case-insensitively."""

    stability = "alpha"
    Params = HeaderLabelParams
    params: HeaderLabelParams

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        wanted = req.headers.get(self.params.headerName.lower(), "")
        key = self.params.labelKey
        return {e.name: 1.0 if wanted and e.labels.get(key) == wanted else 0.0 for e in endpoints}
