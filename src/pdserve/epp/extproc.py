"""Envoy external processing, the protobuf side: headers and body in, the director's
routing decision (director.py) out as a header mutation or an immediate answer.

BUFFERED: Envoy waits for our answer to the headers, then sends the whole body; the body
answer carries the header mutation. FULL_DUPLEX_STREAMED: the body arrives in chunks without
waiting; once complete we answer the headers (with the mutation) and stream the body back.
A GET (headers with end_of_stream) is decided on the headers alone.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from pdserve import request_ids, wire
from pdserve.epp.director import Decision, Director
from pdserve.epp.types import Result
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
    # The header names one endpoint (ORIGINAL_DST reads it); the metadata adds fallbacks for
    # the override-host policy, which a retry after a refused connection moves on to.
    hosts = [dest, *(e.name for e in result.fallbacks[: wire.FALLBACKS])]
    meta = struct_pb2.Struct()
    meta.update({wire.ENVOY_LB_NAMESPACE: {wire.DESTINATION_HEADER: ",".join(hosts)}})
    return common, meta


def _immediate(err: Decision) -> pb.ProcessingResponse:
    body = json.dumps(wire.error_body(err.message, err.status)).encode()
    headers = {"content-type": "application/json"}
    if err.reason:
        headers[wire.DROPPED_HEADER] = err.reason
    if err.status in (429, 503):  # a full queue, a busy or empty pool: may pass in a second
        headers["retry-after"] = wire.RETRY_AFTER
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=err.status),
            headers=pb.HeaderMutation(
                set_headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=k, raw_value=v.encode())
                    )
                    for k, v in headers.items()
                ]
            ),
            body=body,
            details=f"{wire.EPP_DETAILS_PREFIX}{err.status}",
        )
    )


class ExtProc(pb_grpc.ExternalProcessorServicer):
    def __init__(self, director: Director, max_body: int = wire.MAX_REQUEST_BODY) -> None:
        self.director = director
        self.max_body = max_body

    def _too_large(self, headers: dict[str, str]) -> Decision:
        message = f"request body over {self.max_body} bytes"
        self.director.refuse(headers, 413, message)
        return Decision(413, message)

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
        duplex = refused = False
        async for msg in _chain(first, rest):
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                headers = _headers(msg.request_headers)
                duplex = msg.protocol_config.request_body_mode == FULL_DUPLEX
                if msg.request_headers.end_of_stream:
                    yield await self._answer(headers, b"", "headers")
                elif not duplex:
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                if refused:
                    continue  # answered already; the rest of the body is read, not kept
                body += msg.request_body.body
                if len(body) > self.max_body:
                    refused = True
                    yield _immediate(self._too_large(headers))
                    continue
                if msg.request_body.end_of_stream:
                    if duplex:
                        for out in await self._answer_duplex(headers, bytes(body)):
                            yield out
                    else:
                        yield await self._answer(headers, bytes(body), "body")
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
        tokens its answer reports. The director hears each phase, so plugins counting
        in-flight work release it however the stream ends."""
        metrics, usage = self.director.metrics, ResponseUsage("")
        rid, model, started = "", None, False
        try:
            async for msg in _chain(first, rest):
                kind = msg.WhichOneof("request")
                if kind == "request_headers":
                    rid = _headers(msg.request_headers).get(wire.REQUEST_ID_HEADER, "")
                    if rid:
                        self.director.watching(rid)
                    model = self.director.routed.pop(rid, None)
                    if model is not None:
                        self.director.response(rid, "watched")
                    if model:
                        metrics.running.labels(model).inc()
                elif kind == "response_headers":
                    usage = ResponseUsage(_headers(msg.response_headers).get("content-type", ""))
                    if msg.response_headers.end_of_stream:
                        break
                elif kind == "response_body":
                    if model is not None and not started:
                        started = True
                        self.director.response(rid, "started")
                    usage.feed(msg.response_body.body)
                    if msg.response_body.end_of_stream:
                        tokens = usage.finish()
                        if model and tokens is not None:
                            metrics.output_tokens.labels(model, model).observe(tokens)
                        break
        finally:
            if rid:
                self.director.finished(rid)
            if model is not None:
                self.director.response(rid, "complete")
            if model:
                metrics.running.labels(model).dec()

    async def _route(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[pb.CommonResponse, struct_pb2.Struct]:
        """The routing mutation and metadata; every failure comes out as a Decision, so a bug
        hit by one request is that request's 500, not the end of Envoy's stream."""
        try:
            result, _ = await self.director.route(headers, body)
            return _mutation(result)
        except Decision:
            raise
        except Exception as err:
            event(
                log,
                "internal_error",
                logging.ERROR,
                request_id=request_ids.loggable(headers.get(wire.REQUEST_ID_HEADER)),
                error=repr(err),
                traceback=traceback.format_exc(),
            )
            raise Decision(500, "internal error in the endpoint picker") from None

    async def _answer(
        self, headers: dict[str, str], body: bytes, phase: str
    ) -> pb.ProcessingResponse:
        try:
            common, meta = await self._route(headers, body)
        except Decision as err:
            return _immediate(err)
        if phase == "headers":
            return pb.ProcessingResponse(
                request_headers=pb.HeadersResponse(response=common), dynamic_metadata=meta
            )
        return pb.ProcessingResponse(
            request_body=pb.BodyResponse(response=common), dynamic_metadata=meta
        )

    async def _answer_duplex(
        self, headers: dict[str, str], body: bytes
    ) -> list[pb.ProcessingResponse]:
        try:
            common, meta = await self._route(headers, body)
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
