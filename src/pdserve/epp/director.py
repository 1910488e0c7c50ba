"""The EPP's request path, between the ext_proc translation (extproc.py) and the pure
scheduling core (scheduler.py): parse, admission or flow control, scheduling, and the
metrics and decision log a person debugging routing reads.

Without flow control a sheddable request is refused at saturation (legacy admission); with
it (`featureGates: [flowControl]`) every request waits its turn in flow_control.FlowGate and
is then scheduled on endpoints that still have room. Either way a refusal is a Decision:
the status, a message in the engine's error shape, and the reason header llm-d sets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import aiohttp

from pdserve import request_ids, wire
from pdserve.engine_tokens import EngineTokensError, engine_tokens
from pdserve.epp import admission, objectives
from pdserve.epp.datastore import Datastore
from pdserve.epp.envoy import DECISION_DEADLINE
from pdserve.epp.flow_control import Dropped, FlowController, FlowGate
from pdserve.epp.framework import ResponseComplete, ResponsePhase
from pdserve.epp.metrics import EppMetrics
from pdserve.epp.plugins.handlers import DECISION, REASON
from pdserve.epp.plugins.prefix import PrecisePrefixProducer, PrefixCacheScorer
from pdserve.epp.request import BadRequest, parse
from pdserve.epp.scheduler import Scheduler, Trace
from pdserve.epp.types import Cycle, Endpoint, ProfileResult, Request, Result
from pdserve.logs import event

log = logging.getLogger("pdserve.epp")

ROUTED_MAX = 65536


class BoundedDict(OrderedDict[str, str]):
    """Insertion-ordered; the oldest entry goes once `limit` is reached."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if len(self) > self.limit:
            self.popitem(last=False)


class Decision(Exception):
    """The EPP answers the request itself: status, message, and llm-d's dropped reason."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class Director:
    """One per EPP: owns the flow gate, the routed-request book and the decision log."""

    def __init__(
        self,
        scheduler: Scheduler,
        store: Datastore,
        metrics: EppMetrics,
        pool: str = "",
        default_criticality: str | None = None,
        inference_objectives: Mapping[str, int] | None = None,
        deadline: float = DECISION_DEADLINE,
    ) -> None:
        self.scheduler, self.store, self.metrics = scheduler, store, metrics
        self.deadline = deadline
        # Ids from parse to the end of the answer, so a duplicate gets its own; until the
        # watching filter has reported once, an id leaves at its decision (a gateway without
        # that filter never reports an end).
        self.live = request_ids.InFlight()
        self.watched = False
        self.pool, self.default_criticality = pool, default_criticality
        self.objectives = dict(inference_objectives or {})
        self.rng = random.Random()
        # Request id -> model of recently routed requests, for the watching filter to pick up
        # (bounded: a gateway without that filter never collects them).
        self.routed: BoundedDict = BoundedDict(ROUTED_MAX)
        config = scheduler.config
        self.gate: FlowGate | None = None
        if config.flow is not None:
            self.gate = FlowGate(FlowController(config.flow), self._saturation, self._has_endpoints)
        # The token producer's `vllm` parameter: (the engine's URL, timeout) to tokenize with.
        self.tokenizer = next(
            (
                (p.remote_tokenizer_url, p.remote_tokenizer_timeout)
                for p in config.plugins.values()
                if isinstance(p, PrecisePrefixProducer) and p.remote_tokenizer_url
            ),
            None,
        )
        self._http: aiohttp.ClientSession | None = None
        self.listeners = [p for p in config.plugins.values() if isinstance(p, ResponseComplete)]

    async def route(self, headers: dict[str, str], raw: bytes) -> tuple[Result, str]:
        """The request path as the ext_proc server runs it: with flow control, wait for a
        turn first (other requests and bands go on meanwhile); with a token producer that
        tokenizes through the engine, ask the engine before scheduling."""
        if self.gate is None and self.tokenizer is None:
            return self.decide(headers, raw)
        start = time.perf_counter()
        req = self._parse(headers, raw)
        try:
            self.metrics.requests.labels(req.model, req.model).inc()
            await self._wait(req, headers, raw, start)
            result = self._schedule(req, headers, raw, start, flow=self.gate is not None)
        except BaseException:
            self.live.release(req.request_id)
            raise
        self._decided(req)
        return result, req.model

    def decide(self, headers: dict[str, str], raw: bytes) -> tuple[Result, str]:
        """Without flow control: parse, legacy admission, schedule (synchronous)."""
        start = time.perf_counter()
        req = self._parse(headers, raw)
        try:
            self.metrics.requests.labels(req.model, req.model).inc()
            self._legacy_admit(req)
            result = self._schedule(req, headers, raw, start, flow=False)
        except BaseException:
            self.live.release(req.request_id)
            raise
        self._decided(req)
        return result, req.model

    async def _wait(self, req: Request, headers: dict[str, str], raw: bytes, start: float) -> None:
        """What a request may wait on, under the decision deadline: the engine's tokenizer,
        then its turn (flow control) or legacy admission."""
        queued = False
        try:
            async with asyncio.timeout(self.deadline):
                if self.tokenizer is not None and raw:
                    # Before the turn: from a dispatch to its scheduling nothing may wait, or
                    # other requests would pass the gate before this one is counted.
                    req.prompt_tokens = await self._engine_tokens(req)
                if self.gate is None:
                    self._legacy_admit(req)
                else:
                    queued = True
                    await self._wait_turn(req, headers, len(raw))
        except TimeoutError:
            raise self._past_deadline(req, queued, time.perf_counter() - start) from None

    def _past_deadline(self, req: Request, queued: bool, waited: float) -> Decision:
        """Queued by flow control it is a 429, as an expired TTL; waiting on the engine's
        tokenizer a 503. Either way the client may retry (Retry-After)."""
        status = 429 if queued else 503
        stage = "flow control's queue" if queued else "the engine's tokenizer"
        self.metrics.errors.labels(req.model, req.model, str(status)).inc()
        event(log, "decision_deadline", logging.WARNING, request_id=req.request_id,
              status=status, stage=stage, seconds=round(waited, 3))  # fmt: skip
        reason = wire.DROPPED_TTL_EXPIRED if queued else None
        message = f"no routing decision within {self.deadline:g}s (waiting in {stage})"
        return Decision(status, message, reason)

    def _decided(self, req: Request) -> None:
        if not self.watched:
            self.live.release(req.request_id)

    def watching(self, request_id: str) -> None:
        """The watching filter saw a routed request start: it is in flight until it ends
        (from now on ids stay claimed past their decision)."""
        self.watched = True
        self.live.add(request_id)

    def finished(self, request_id: str) -> None:
        """The watching filter saw the end of a request's answer: its id is free again."""
        self.live.release(request_id)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _legacy_admit(self, req: Request) -> None:
        reason = self._shed(self.store.list(), time.monotonic()) if req.sheddable else None
        if reason is not None:
            self.metrics.errors.labels(req.model, req.model, "429").inc()
            event(log, "shed", request_id=req.request_id, model=req.model,
                  priority=req.priority, reason=reason)  # fmt: skip
            raise Decision(429, f"{reason}, sheddable request dropped", wire.DROPPED_SATURATED)

    async def _wait_turn(self, req: Request, headers: dict[str, str], size: int) -> None:
        assert self.gate is not None
        try:
            waited = await self.gate.admit(
                req.request_id, objectives.fairness_id(headers), req.priority, size
            )
        except Dropped as drop:
            self.metrics.errors.labels(req.model, req.model, str(drop.status)).inc()
            event(log, "dropped", request_id=req.request_id, priority=req.priority,
                  status=drop.status, reason=drop.reason)  # fmt: skip
            raise Decision(drop.status, drop.message, drop.reason) from None
        if waited:
            self.metrics.queue_wait.labels(str(req.priority)).observe(waited)

    async def _engine_tokens(self, req: Request) -> list[int] | None:
        """The engine's own tokens for the prompt; on failure None, and the producer falls
        back to the tokenizer on disk (logged: a precise hit needs the engine's tokens)."""
        assert self.tokenizer is not None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url, timeout = self.tokenizer
        try:
            return await engine_tokens(self._http, url, req, timeout=timeout)
        except EngineTokensError as err:
            event(log, "engine_tokenize_failed", logging.WARNING, request_id=req.request_id,
                  error=str(err))  # fmt: skip
            return None

    def _parse(self, headers: dict[str, str], raw: bytes) -> Request:
        """The request, under an id no other request in flight has (claimed in self.live)."""
        try:
            req = parse(headers, raw, self.default_criticality, self.objectives)
        except BadRequest as err:
            self._rejected(headers, str(err))
            raise Decision(400, str(err)) from None
        client = headers.get(wire.REQUEST_ID_HEADER)
        if client and client != req.request_id:
            event(log, "request_id_replaced", logging.WARNING, request_id=req.request_id,
                  client_id=request_ids.shown(client))  # fmt: skip
        claimed = self.live.claim(req.request_id)
        if claimed != req.request_id:
            event(log, "request_id_duplicate", logging.WARNING, request_id=claimed,
                  client_id=req.request_id)  # fmt: skip
            req.request_id = claimed
        return req

    def _schedule(
        self, req: Request, headers: dict[str, str], raw: bytes, start: float, flow: bool
    ) -> Result:
        now = time.monotonic()
        endpoints = self.store.list()
        if flow:
            endpoints = self._with_room(endpoints, now)
        cycle = Cycle(now=now, rng=self.rng)
        trace = Trace()
        result = self.scheduler.schedule(cycle, req, endpoints, trace)
        elapsed = time.perf_counter() - start
        self._observe(req.model, len(req.prompt), elapsed, trace)
        self.metrics.pd.labels(cycle.get(DECISION, "decode-only")).inc()
        # A request without a body (GET /v1/models, /health) is routed but not scheduled on
        # a prompt: logged at debug, so the routing trace shows only inference requests; its
        # line is built only when debug is on, since the profiles' scores cost a dict each.
        level = logging.INFO if raw else logging.DEBUG
        if log.isEnabledFor(level):
            fields = _decision_fields(headers, req, len(endpoints), result, cycle)
            event(
                log, "decision" if raw else "routed", level, **fields, ms=round(elapsed * 1000, 3)
            )
        if result.endpoint is None:
            self.metrics.errors.labels(req.model, req.model, "503").inc()
            raise Decision(503, "no endpoint available for this request", wire.DROPPED_NO_ENDPOINTS)
        for profile in result.profiles.values():
            if profile.endpoint is not None and not profile.skipped:
                profile.endpoint.metrics.sent.append(now)
        self.routed[req.request_id] = req.model
        if headers.get(wire.REQUEST_ID_HEADER) != req.request_id:
            # The id this decision was logged under travels on (a new one where the client's
            # was missing or unfit), so the sidecar and engines log the same one and the
            # routing trace can join them.
            result.headers[wire.REQUEST_ID_HEADER] = req.request_id
        return result

    def response(self, request_id: str, phase: ResponsePhase) -> None:
        """How a routed request's answer goes, from the watching filter: each plugin that
        keeps per-request state (in-flight counts) hears it, with the director's clock."""
        if not self.listeners:
            return
        now = time.monotonic()
        for plugin in self.listeners:
            plugin.response(request_id, phase, now)

    def _ready(self) -> list[Endpoint]:
        return [e for e in self.store.list() if e.metrics.ready]

    def _has_endpoints(self) -> bool:
        return bool(self._ready())

    def _saturation(self, now: float) -> float:
        return float(self.scheduler.config.detector.saturation(self._ready(), now))

    def _with_room(self, endpoints: list[Endpoint], now: float) -> list[Endpoint]:
        """Flow control's dispatch filter: endpoints past 1 + headroom of their capacity sit
        this request out; a role left with none keeps its own, so P/D still finds a pair."""
        detector = self.scheduler.config.detector
        roomy = [e for e in endpoints if detector.has_room(e, now)]
        roles = {e.role for e in roomy}
        return roomy + [e for e in endpoints if e.role not in roles]

    def _shed(self, endpoints: list[Endpoint], now: float) -> str | None:
        """Why a sheddable request is refused now, or None: the config's saturation detector
        and admitters when it has any (their reason goes into the 429), else the built-in
        thresholds. Read from this director's config, so two never share one check."""
        config = self.scheduler.config
        if config.detector is not None or config.admitters:
            return config.shed(endpoints, now)
        return "system saturated" if admission.saturated(endpoints, now) else None

    def _rejected(self, headers: dict[str, str], reason: str) -> None:
        self.refuse(headers, 400, reason)

    def refuse(self, headers: dict[str, str], status: int, reason: str) -> None:
        """A body the EPP cannot read never reaches an engine, so this line is the only trace
        of it: under the id Envoy gave the request, which is in the gateway's access log."""
        self.metrics.errors.labels("", "", str(status)).inc()
        event(
            log,
            "bad_request",
            logging.WARNING,
            request_id=request_ids.loggable(headers.get(wire.REQUEST_ID_HEADER)),
            status=status,
            reason=reason,
        )

    def _observe(self, model: str, chars: int, elapsed: float, trace: Trace) -> None:
        m = self.metrics
        m.duration.labels(model, model).observe(elapsed)
        m.input_tokens.labels(model, model).observe(chars / 4)
        m.e2e.observe(elapsed)
        for name, secs in trace.plugin_seconds.items():
            plugin = self.scheduler.config.plugins.get(name)
            m.plugin.labels(plugin.type_name if plugin else name, name).observe(secs)
        self._observe_prefix()

    def _observe_prefix(self) -> None:
        """Also each second (observe_pool): KV events grow the index between requests."""
        for plugin in self.scheduler.config.plugins.values():
            if isinstance(plugin, PrefixCacheScorer):
                self.metrics.prefix_size.set(plugin.source.size())
                if plugin.lookups:
                    self.metrics.prefix_hit.set(plugin.hits / plugin.lookups)

    def observe_pool(self) -> None:
        eps = self.store.list()
        now = time.monotonic()
        fresh = [e for e in eps if e.metrics.ready and e.metrics.fresh(now)]
        self.metrics.pool_ready.labels(self.pool).set(len(fresh))
        self._observe_prefix()
        if self.gate is not None:
            for priority, depth in self.gate.controller.depth().items():
                self.metrics.queue_size.labels(str(priority)).set(depth)
        if fresh:
            self.metrics.pool_kv.labels(self.pool).set(
                sum(e.metrics.kv_usage for e in fresh) / len(fresh)
            )
            self.metrics.pool_queue.labels(self.pool).set(
                sum(e.metrics.waiting for e in fresh) / len(fresh)
            )


def _decision_fields(
    headers: dict[str, str], req: Request, pool: int, result: Result, cycle: Cycle
) -> dict[str, Any]:
    """The decision log line's fields: what a person following one request's routing reads."""
    return {
        "request_id": req.request_id,
        "method": headers.get(":method"),
        "path": headers.get(":path"),
        "model": req.model,
        "prompt_chars": len(req.prompt),
        "priority": req.priority,
        "pool": pool,
        "profiles": {name: _profile_log(r) for name, r in result.profiles.items()},
        "decode": result.endpoint.name if result.endpoint else None,
        "prefill": result.headers.get(wire.PREFILLER_HEADER),
        "pd": cycle.get(DECISION, "decode-only"),
        "reason": cycle.find(REASON),
    }


def _profile_log(result: ProfileResult) -> dict[str, Any]:
    """One profile's run: what its filters left, each scorer's scores, whom it picked."""
    return {
        "candidates": result.candidates,
        "picked": result.endpoint.name if result.endpoint else None,
        "scores": {k: {e: round(s, 4) for e, s in v.items()} for k, v in result.scores.items()},
    }
