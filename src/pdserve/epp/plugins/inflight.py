"""In-flight load: the requests and prompt tokens this EPP has sent to each endpoint and not
yet seen answered, as llm-d-router v0.10's inflight-load-producer counts them, and
token-load-scorer, which spreads by those tokens. The counts go up in the pre-request hook
and down as the watching filter reports the answer (framework.ResponseComplete); a request
whose answer is never reported is dropped after upstream's staleness threshold."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

from pdserve.epp.framework import (
    Parameters,
    Plugin,
    PreRequest,
    Ref,
    ResponseComplete,
    ResponsePhase,
    Scorer,
    register,
)
from pdserve.epp.plugins.prefix import ApproxPrefixProducer, PrefixProducer, estimated_tokens, held
from pdserve.epp.types import Cycle, Endpoint, Request, Result

DEFAULT_OUTPUT_RATIO = 1.5
# Upstream's PluginState reaps a request's entries after 5 minutes without access, unless the
# ext_proc stream it is bound to is still open: here, until the watching filter has it.
STALE_AFTER = 300.0
PREFILL_PROFILE = "prefill"  # upstream releases this profile's entry whole at the first chunk


class InFlightParams(Parameters):
    addEstimatedOutputTokens: bool = False
    outputRatio: float | None = Field(None, ge=0.0)
    maxEstimatedOutputTokens: int | None = Field(None, ge=0)
    prefixMatchInfoProducerName: Annotated[str, Ref("PrefixProducer")] = ""
    syncCrossReplicaState: bool | None = None


@dataclass
class Share:
    """One profile's contribution to one endpoint's counts, released at most once."""

    endpoint: str
    profile: str
    tokens: int
    requests: int = 1


@dataclass
class Tracked:
    shares: list[Share]
    touched: float
    started: bool = field(default=False)


@register("inflight-load-producer")
class InFlightLoadProducer(PreRequest, ResponseComplete):
    """Per endpoint, the requests dispatched and not answered, and their prompt tokens not
    already cached there (the prefix producer's match, if there is one), plus with
    addEstimatedOutputTokens an output estimate: min(round(input x outputRatio), the
    request's max tokens, maxEstimatedOutputTokens). Without output estimates the tokens go
    at the first response chunk (prefill is done), the request at the end; the "prefill"
    profile's share goes whole at the first chunk (producer.go ResponseBody)."""

    Params = InFlightParams
    params: InFlightParams

    def setup(self) -> None:
        p = self.params
        self.ratio = DEFAULT_OUTPUT_RATIO if p.outputRatio is None else p.outputRatio
        self.requests: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        # Request id -> its shares: not yet watched (oldest access first), and watched.
        self.waiting: OrderedDict[str, Tracked] = OrderedDict()
        self.watched: dict[str, Tracked] = {}
        self._prefix: PrefixProducer | None = None
        self.plugins: dict[str, Plugin] | None = None

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        self.plugins = plugins

    @property
    def prefix(self) -> PrefixProducer | None:
        """The match info is optional upstream: the named producer, else the default one
        if the config has it, none added for this producer's sake. Looked up at first use,
        since another plugin's bind may add the default after this one's."""
        if self._prefix is None and self.plugins is not None:
            named = self.refs.get("prefixMatchInfoProducerName")
            default = self.plugins.get(ApproxPrefixProducer.type_name)
            found = named if isinstance(named, PrefixProducer) else default
            self._prefix = found if isinstance(found, PrefixProducer) else None
            self.plugins = None
        return self._prefix

    def in_flight(self, endpoint: str) -> tuple[int, int]:
        """(requests, tokens) in flight on the endpoint."""
        return self.requests.get(endpoint, 0), self.tokens.get(endpoint, 0)

    def request_tokens(self, cycle: Cycle, req: Request, e: Endpoint) -> int:
        """What this request would add on `e`: its uncached prompt tokens, plus the output
        estimate when configured (upstream's UncachedRequestTokens)."""
        inputs = input_tokens(req)
        tokens = self._uncached(cycle, req, e, inputs)
        if self.params.addEstimatedOutputTokens:
            tokens += self.output_estimate(inputs, req.max_output_tokens)
        return tokens

    def output_estimate(self, inputs: int, client_cap: int | None) -> int:
        """round(inputs x ratio) under the client's and the operator's caps (token_estimator.go
        EstimateOutput); Go's math.Round rounds halves away from zero."""
        if inputs <= 0:
            return 0
        est = math.floor(inputs * self.ratio + 0.5)
        for cap in (client_cap, self.params.maxEstimatedOutputTokens):
            if cap is not None and 0 <= cap < est:
                est = cap
        return est

    def _uncached(self, cycle: Cycle, req: Request, e: Endpoint, inputs: int) -> int:
        """Blocks not held times the block size, plus any tail past what the index covers."""
        src = self.prefix
        if src is None:
            return max(inputs, 0)
        m = src.match(cycle, req)
        if m.block_tokens <= 0:
            return max(inputs, 0)
        indexed = m.total * m.block_tokens
        uncached = max(indexed - held(src, m, e) * m.block_tokens, 0)
        return uncached + max(inputs - indexed, 0)

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        self._reap(cycle.now)
        if not req.request_id:
            return
        self._release(req.request_id)  # an id seen again replaces its old shares
        shares = []
        for profile, chosen in result.profiles.items():
            if chosen.endpoint is None:
                continue
            e = chosen.endpoint
            share = Share(e.name, profile, self.request_tokens(cycle, req, e))
            _add(self.requests, e.name, 1)
            _add(self.tokens, e.name, share.tokens)
            shares.append(share)
        if shares:
            self.waiting[req.request_id] = Tracked(shares, cycle.now)

    def response(self, request_id: str, phase: ResponsePhase, now: float) -> None:
        self._reap(now)
        if phase == "complete":
            self._release(request_id)
            return
        tracked = self.watched.get(request_id) or self.waiting.get(request_id)
        if tracked is None:
            return
        tracked.touched = now
        if request_id in self.waiting:
            self.waiting.move_to_end(request_id)  # last in the staleness order
        if phase == "watched":
            self.watched[request_id] = self.waiting.pop(request_id, tracked)
        elif not tracked.started:
            tracked.started = True
            self._first_chunk(tracked)

    def _first_chunk(self, tracked: Tracked) -> None:
        for share in tracked.shares:
            if share.profile == PREFILL_PROFILE:
                self._drop(share, share.tokens, share.requests)
            elif not self.params.addEstimatedOutputTokens:
                self._drop(share, share.tokens, 0)

    def _release(self, request_id: str) -> None:
        tracked = self.waiting.pop(request_id, None) or self.watched.pop(request_id, None)
        for share in tracked.shares if tracked else ():
            self._drop(share, share.tokens, share.requests)

    def _drop(self, share: Share, tokens: int, requests: int) -> None:
        """Counts never go below 0 (upstream clamps too); an endpoint at 0 is forgotten."""
        share.tokens -= tokens
        share.requests -= requests
        _add(self.tokens, share.endpoint, -tokens)
        _add(self.requests, share.endpoint, -requests)

    def _reap(self, now: float) -> None:
        while self.waiting:
            rid, tracked = next(iter(self.waiting.items()))
            if now - tracked.touched <= STALE_AFTER:
                return
            self._release(rid)

    def inert(self) -> dict[str, str]:
        p, out = self.params, {}
        if not p.addEstimatedOutputTokens:
            for key in ("outputRatio", "maxEstimatedOutputTokens"):
                if getattr(p, key) is not None:
                    out[key] = "used only with addEstimatedOutputTokens: true"
        if p.syncCrossReplicaState is not None:
            out["syncCrossReplicaState"] = "no cross-replica syncer: counts are this EPP's own"
        return out


def input_tokens(req: Request) -> int:
    """The engine's token count when the request path fetched it, else the 4-byte estimate
    (upstream reads the token-producer's TokenizedPrompt)."""
    if req.prompt_tokens is not None:
        return len(req.prompt_tokens)
    return estimated_tokens(req.prompt)


def _add(counts: dict[str, int], key: str, delta: int) -> None:
    value = max(counts.get(key, 0) + delta, 0)
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def default_in_flight(plugins: dict[str, Plugin]) -> InFlightLoadProducer:
    """The producer of the unnamed in-flight key, as upstream's registry makes it the default:
    the one configured under its type name, else one with defaults, added to the config."""
    found = plugins.get(InFlightLoadProducer.type_name)
    if isinstance(found, InFlightLoadProducer):
        return found
    producer = InFlightLoadProducer(InFlightLoadProducer.type_name)
    plugins[producer.name] = producer
    producer.bind(plugins, ())  # the loader's bind pass has begun without it
    return producer


def bound_in_flight(plugin: Plugin, plugins: dict[str, Plugin]) -> InFlightLoadProducer:
    named = plugin.refs.get("inFlightLoadProducerName")
    return named if isinstance(named, InFlightLoadProducer) else default_in_flight(plugins)


TOKEN_QUEUE_THRESHOLD = 4194304  # upstream's: 128 requests of 32k tokens


class TokenLoadParams(Parameters):
    queueThresholdTokens: int = TOKEN_QUEUE_THRESHOLD
    inFlightLoadProducerName: Annotated[str, Ref("InFlightLoadProducer")] = ""


@register("token-load-scorer")
class TokenLoadScorer(Scorer):
    """1 - min(in-flight tokens + this request's, threshold) / threshold; no load scores 1
    (scorer/tokenload/token_load.go Score)."""

    Params = TokenLoadParams
    params: TokenLoadParams

    def setup(self) -> None:
        given = self.params.queueThresholdTokens
        self.threshold = given if given > 0 else TOKEN_QUEUE_THRESHOLD
        self.producer: InFlightLoadProducer | None = None

    def bind(self, plugins: dict[str, Plugin], profiles: object) -> None:
        self.producer = bound_in_flight(self, plugins)

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        if self.producer is None:  # made outside a config (tests): the defaults
            self.producer = InFlightLoadProducer(InFlightLoadProducer.type_name)
        src, out = self.producer, {}
        for e in endpoints:
            load = src.in_flight(e.name)[1] + src.request_tokens(cycle, req, e)
            out[e.name] = 1.0 if load <= 0 else 1.0 - min(load, self.threshold) / self.threshold
        return out

    def inert(self) -> dict[str, str]:
        if self.params.queueThresholdTokens <= 0:
            return {"queueThresholdTokens": f"not positive: {TOKEN_QUEUE_THRESHOLD} is used"}
        return {}
