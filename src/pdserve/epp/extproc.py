"""Envoy external processing: headers and body in, a routing decision out.

BUFFERED: Envoy waits for our answer to the headers, then sends the whole body; the body
answer carries the header mutation. FULL_DUPLEX_STREAMED: the body arrives in chunks without
waiting; once complete we answer the headers (with the mutation) and stream the body back.
A GET (headers with end_of_stream) is decided on the headers alone.
"""

from __future__ import annotations

import json
import logging
import random
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from pdserve import wire
from pdserve.epp import admission
from pdserve.epp.datastore import Datastore
from pdserve.epp.metrics import EppMetrics
from pdserve.epp.plugins.handlers import DECISION, REASON
from pdserve.epp.plugins.prefix import PrefixCacheScorer
from pdserve.epp.request import BadRequest, parse
from pdserve.epp.scheduler import Scheduler, Trace
from pdserve.epp.types import Cycle, Endpoint, ProfileResult, Request, Result
from pdserve.epp.usage import ResponseUsage
from pdserve.logs import event

log = logging.getLogger("pdserve.epp")
FULL_DUPLEX = 4  # ProcessingMode.BodySendMode.FULL_DUPLEX_STREAMED
# Headers only the EPP may choose: a client's copy is removed unless the EPP set its own, or
# a gateway client could pick the prefill or encode host the decode sidecar calls (SSRF), or
# the rank a data-parallel sidecar forwards to.
EPP_ONLY_HEADERS = (
    wire.PREFILLER_HEADER,
    wire.PREFILLER_URL_HEADER,
    wire.ENCODER_HEADER,
    wire.DATA_PARALLEL_HEADER,
)


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
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Picker:
    """The EPP's request path: admission, scheduling, metrics and the decision log."""

    def __init__(
        self,
        scheduler: Scheduler,
        store: Datastore,
        metrics: EppMetrics,
        pool: str = "",
        default_criticality: str | None = None,
    ) -> None:
        self.scheduler, self.store, self.metrics = scheduler, store, metrics
        self.pool, self.default_criticality = pool, default_criticality
        self.rng = random.Random()
        # Request id -> model of recently routed requests, for the watching filter to pick up
        # (bounded: a gateway without that filter never collects them).
        self.routed: BoundedDict = BoundedDict(ROUTED_MAX)

    def decide(self, headers: dict[str, str], raw: bytes) -> tuple[Result, str]:
        start = time.perf_counter()
        try:
            req = parse(headers, raw, self.default_criticality)
        except BadRequest as err:
            self._rejected(headers, str(err))
            raise Decision(400, str(err)) from None
        now = time.monotonic()
        endpoints = self.store.list()
        self.metrics.requests.labels(req.model, req.model).inc()
        reason = self._shed(endpoints, now) if req.sheddable else None
        if reason is not None:
            self.metrics.errors.labels(req.model, req.model, "429").inc()
            event(
                log,
                "shed",
                request_id=req.request_id,
                model=req.model,
                priority=req.priority,
                reason=reason,
            )
            raise Decision(429, f"{reason}, sheddable request dropped")
        cycle = Cycle(now=now, rng=self.rng)
        trace = Trace()
        result = self.scheduler.schedule(cycle, req, endpoints, trace)
        elapsed = time.perf_counter() - start
        self._observe(req.model, len(req.prompt), elapsed, trace)
        self.metrics.pd.labels(cycle.state.get(DECISION, "decode-only")).inc()
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
            raise Decision(503, "no endpoint available for this request")
        self.routed[req.request_id] = req.model
        if headers.get(wire.REQUEST_ID_HEADER) != req.request_id:
            # The id this decision was logged under travels on (a new one where the client's
            # was missing or unfit), so the sidecar and engines log the same one and the
            # routing trace can join them.
            result.headers[wire.REQUEST_ID_HEADER] = req.request_id
        return result, req.model

    def _shed(self, endpoints: list[Endpoint], now: float) -> str | None:
        """Why a sheddable request is refused now, or None: the config's saturation detector
        and admitters when it has any (their reason goes into the 429), else the built-in
        thresholds. Read from this picker's config, so two pickers never share one check."""
        config = self.scheduler.config
        if config.detector is not None or config.admitters:
            return config.shed(endpoints, now)
        return "system saturated" if admission.saturated(endpoints, now) else None

    def _rejected(self, headers: dict[str, str], reason: str) -> None:
        """A body the EPP cannot read never reaches an engine, so this line is the only trace
        of it: under the id Envoy gave the request, which is in the gateway's access log."""
        self.metrics.errors.labels("", "", "400").inc()
        event(
            log,
            "bad_request",
            logging.WARNING,
            request_id=headers.get(wire.REQUEST_ID_HEADER),
            status=400,
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
        if fresh:
            self.metrics.pool_kv.labels(self.pool).set(
                sum(e.metrics.kv_usage for e in fresh) / len(fresh)
            )
            self.metrics.pool_queue.labels(self.pool).set(
                sum(e.metrics.waiting for e in fresh) / len(fresh)
            )


async def _chain(
    first: pb.ProcessingRequest, rest: AsyncIterator[pb.ProcessingRequest]
) -> AsyncIterator[pb.ProcessingRequest]:
    yield first
    async for msg in rest:
        yield msg


def _headers(msg: pb.HttpHeaders) -> dict[str, str]:
    """Header values as text; Envoy passes bytes through, and a non-UTF-8 value from a client
    must not end the stream."""
    return {
        h.key.lower(): h.raw_value.decode(errors="replace") if h.raw_value else h.value
        for h in msg.headers.headers
    }


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
        "pool": pool,
        "profiles": {name: _profile_log(r) for name, r in result.profiles.items()},
        "decode": result.endpoint.name if result.endpoint else None,
        "prefill": result.headers.get(wire.PREFILLER_HEADER),
        "pd": cycle.state.get(DECISION, "decode-only"),
        "reason": cycle.state.get(REASON),
    }


def _profile_log(result: ProfileResult) -> dict[str, Any]:
    """One profile's run: what its filters left, each scorer's scores, whom it picked."""
    return {
        "candidates": result.candidates,
        "picked": result.endpoint.name if result.endpoint else None,
        "scores": {k: {e: round(s, 4) for e, s in v.items()} for k, v in result.scores.items()},
    }


def _mutation(result: Result) -> tuple[pb.CommonResponse, struct_pb2.Struct]:
    dest = result.endpoint.name if result.endpoint else ""
    added = {wire.DESTINATION_HEADER: dest, **result.headers}
    common = pb.CommonResponse(
        header_mutation=pb.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
                for k, v in added.items()
            ],
            remove_headers=[h for h in EPP_ONLY_HEADERS if h not in added],
        ),
        clear_route_cache=True,
    )
    meta = struct_pb2.Struct()
    meta.update({wire.ENVOY_LB_NAMESPACE: {wire.DESTINATION_HEADER: dest}})
    return common, meta


def _immediate(err: Decision) -> pb.ProcessingResponse:
    body = json.dumps(wire.error_body(err.message, err.status)).encode()
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=err.status),
            headers=pb.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(
                            key="content-type", raw_value=b"application/json"
                        )
                    )
                ]
            ),
            body=body,
            details=f"{wire.EPP_DETAILS_PREFIX}{err.status}",
        )
    )


class ExtProc(pb_grpc.ExternalProcessorServicer):
    def __init__(self, picker: Picker) -> None:
        self.picker = picker

    async def Process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = aiter(requests)
        first = await anext(stream, None)
        if first is None:
            return
        if first.observability_mode:  # the gateway's second, watching filter: no answers
            await self._watch(first, stream)
            return
        async for out in self._route_stream(first, stream):
            yield out

    async def _route_stream(
        self, first: pb.ProcessingRequest, rest: AsyncIterator[pb.ProcessingRequest]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        headers: dict[str, str] = {}
        body = bytearray()
        duplex = False
        async for msg in _chain(first, rest):
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                headers = _headers(msg.request_headers)
                duplex = msg.protocol_config.request_body_mode == FULL_DUPLEX
                if msg.request_headers.end_of_stream:
                    yield self._answer(headers, b"", "headers")
                elif not duplex:
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                body += msg.request_body.body
                if msg.request_body.end_of_stream:
                    if duplex:
                        for out in self._answer_duplex(headers, bytes(body)):
                            yield out
                    else:
                        yield self._answer(headers, bytes(body), "body")
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())

    async def _watch(
        self, first: pb.ProcessingRequest, rest: AsyncIterator[pb.ProcessingRequest]
    ) -> None:
        """A routed request's life as the watching filter reports it (Envoy does not wait
        for us): in flight from its headers to the end of its answer, and the completion
        tokens its answer reports."""
        metrics, model, usage = self.picker.metrics, "", ResponseUsage("")
        try:
            async for msg in _chain(first, rest):
                kind = msg.WhichOneof("request")
                if kind == "request_headers":
                    rid = _headers(msg.request_headers).get(wire.REQUEST_ID_HEADER, "")
                    model = self.picker.routed.pop(rid, "")
                    if model:
                        metrics.running.labels(model).inc()
                elif kind == "response_headers":
                    usage = ResponseUsage(_headers(msg.response_headers).get("content-type", ""))
                    if msg.response_headers.end_of_stream:
                        break
                elif kind == "response_body":
                    usage.feed(msg.response_body.body)
                    if msg.response_body.end_of_stream:
                        tokens = usage.finish()
                        if model and tokens is not None:
                            metrics.output_tokens.labels(model, model).observe(tokens)
                        break
        finally:
            if model:
                metrics.running.labels(model).dec()

    def _route(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[pb.CommonResponse, struct_pb2.Struct]:
        """The routing mutation and metadata; every failure comes out as a Decision, so a bug
        hit by one request is that request's 500, not the end of Envoy's stream."""
        try:
            result, _ = self.picker.decide(headers, body)
            return _mutation(result)
        except Decision:
            raise
        except Exception as err:
            event(
                log,
                "internal_error",
                logging.ERROR,
                request_id=headers.get(wire.REQUEST_ID_HEADER),
                error=repr(err),
                traceback=traceback.format_exc(),
            )
            raise Decision(500, "internal error in the endpoint picker") from None

    def _answer(self, headers: dict[str, str], body: bytes, phase: str) -> pb.ProcessingResponse:
        try:
            common, meta = self._route(headers, body)
        except Decision as err:
            return _immediate(err)
        if phase == "headers":
            return pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(response=common), dynamic_metadata=meta
            )
        return pb.ProcessingResponse(
            request_body=pb.BodyResponse(response=common), dynamic_metadata=meta
        )

    def _answer_duplex(self, headers: dict[str, str], body: bytes) -> list[pb.ProcessingResponse]:
        try:
            common, meta = self._route(headers, body)
        except Decision as err:
            return [_immediate(err)]
        streamed = pb.CommonResponse(
            body_mutation=pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(body=body, end_of_stream=True)
            )
        )
        return [
            pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(response=common), dynamic_metadata=meta
            ),
            pb.ProcessingResponse(request_body=pb.BodyResponse(response=streamed)),
        ]
