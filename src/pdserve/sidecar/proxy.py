"""The sidecar's HTTP server (aiohttp): the P/D path, and a transparent proxy for the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pdserve import json_body, request_ids, wire
from pdserve.logs import event, now_ms
from pdserve.sidecar import chunked, kv_release, legs, usage
from pdserve.sidecar.admission import Admission, errors_as_json
from pdserve.sidecar.allowlist import AllowAll, AllowList, parse_target
from pdserve.sidecar.checks import ContextLimits, check
from pdserve.sidecar.metrics import SidecarMetrics
from pdserve.sidecar.timeouts import Attempt, LegTimeouts
from pdserve.tls import client_context
from pdserve.vllm_request import ApiError

log = logging.getLogger("pdserve.sidecar")


def _request_id(client: str | None) -> str:
    """The client's id if a header and a log line can carry it whole, else a fresh one.
    Behind the EPP it is settled already; failing open, Envoy hands over the client's."""
    if client and request_ids.fit(client):
        return client
    rid = request_ids.fresh()
    if client:
        event(log, "request_id_replaced", logging.WARNING, request_id=rid,
              client_id=request_ids.shown(client))  # fmt: skip
    return rid


PD_PATHS = ("/v1/completions", "/v1/chat/completions")
# Hop-by-hop headers (RFC 9110) and those aiohttp recomputes.
_SKIP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Options:
    vllm_port: int = 8001
    connector: str = "nixlv2"
    decoder_tls: bool = False
    decoder_insecure: bool = False
    prefiller_tls: bool = False
    prefiller_insecure: bool = False
    allow: AllowList = field(default_factory=AllowAll)
    # Each leg's timeouts (timeouts.py): a connect that hangs, the wait for the response
    # headers (first byte), a silence between two chunks after them; the prefill leg has a
    # total too. A decode stream as a whole stays unbounded (a long generation is no fault).
    prefill_timeout: float = 300.0
    prefill_connect_timeout: float = 10.0
    prefill_first_byte_timeout: float = 300.0
    prefill_read_timeout: float = 300.0
    connect_timeout: float = 10.0
    first_byte_timeout: float = 300.0
    read_timeout: float = 300.0
    # Requests in flight through this listener past which the next is a 429 (0: no bound):
    # without flow control in the EPP nothing else bounds the engine's queue.
    max_in_flight: int = 512
    max_request_body: int = 64 * 2**20
    # Upstream's retry: a 502/503/504 (or no answer) is tried again this many times, this
    # many seconds apart; once they run out the client gets the prefiller's error. With
    # none, a failed prefill falls back to decode-only (pdserve's contract, PROTOCOLS.md).
    prefill_max_retries: int = 0
    prefill_retry_backoff: float = 0.2
    prefiller_sampling: bool = False  # a random one of the header's targets, not the first
    # Data parallel: rank i is served on port+i by the engine on vllm_port+i.
    data_parallel_size: int = 1
    port: int = 8000
    pod_ip: str = ""  # the host x-data-parallel-host-port must name ("": any)
    decode_chunk_size: int = 0
    # Free a prefill's KV lease the decode engine will not claim (kv_release.py).
    release_unclaimed_kv: bool = True


PROBE_TIMEOUT = 2.0  # the engine's /health and /metrics, asked on our own /health and /metrics
RETRYABLE = (502, 503, 504)  # upstream's transient statuses; 500 and 501 fail at once
# How long a prefill leg may still finish after its client left: an answer already on its
# way holds a lease that only its KV handle can free, so it is read and released instead of
# dropped; a leg still running past this is cancelled, which aborts it on the prefiller.
ABANDON_GRACE = 0.1


def _headers(src: Any) -> dict[str, str]:
    return {k: v for k, v in src.items() if k.lower() not in _SKIP}


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(wire.error_body(message, status, param=param), status=status)


class Sidecar:
    def __init__(self, opts: Options, forward_data_parallel: bool = True) -> None:
        self.opts = opts
        self.metrics = SidecarMetrics()
        scheme = "https" if opts.decoder_tls else "http"
        self.decoder = f"{scheme}://127.0.0.1:{opts.vllm_port}"
        # Sidecar rank port -> that rank's engine; only the rank-0 listener forwards by the
        # header, as upstream's (a rank's own listener serves its own engine).
        self.ranks: dict[int, str] = {}
        if forward_data_parallel:
            self.ranks = {
                opts.port + i: f"{scheme}://127.0.0.1:{opts.vllm_port + i}"
                for i in range(opts.data_parallel_size)
            }
        # Built once: a client context loads the system's CA store, milliseconds per request.
        self.decoder_ssl = _client_ssl(opts.decoder_tls, opts.decoder_insecure)
        self.prefiller_ssl = _client_ssl(opts.prefiller_tls, opts.prefiller_insecure)
        self.http: aiohttp.ClientSession | None = None
        self.limits = ContextLimits(self._model_cards)
        self.background: set[asyncio.Task[Any]] = set()  # releases outliving their request
        self.decode_timeouts = LegTimeouts(
            opts.connect_timeout, opts.first_byte_timeout, opts.read_timeout
        )
        self.prefill_timeouts = LegTimeouts(
            opts.prefill_connect_timeout,
            opts.prefill_first_byte_timeout,
            opts.prefill_read_timeout,
            opts.prefill_timeout,
        )
        self.admission = Admission(opts.max_in_flight, self.metrics)

    async def start(self, _: web.Application) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.opts.connect_timeout,
                sock_read=self.opts.read_timeout,
            ),
            auto_decompress=False,
        )

    async def close(self, _: web.Application) -> None:
        if self.background:
            await asyncio.wait(set(self.background), timeout=kv_release.RELEASE_TIMEOUT)
        if self.http is not None:
            await self.http.close()

    def rank_listeners(self) -> list[tuple[int, Sidecar]]:
        """(port, sidecar) for every data-parallel rank past the first."""
        out = []
        for i in range(1, self.opts.data_parallel_size):
            opts = dataclasses.replace(
                self.opts, port=self.opts.port + i, vllm_port=self.opts.vllm_port + i
            )
            out.append((opts.port, Sidecar(opts, forward_data_parallel=False)))
        return out

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.opts.max_request_body,
            middlewares=[errors_as_json(self.opts.max_request_body), self.admission.middleware],
        )
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.close)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        for path in PD_PATHS:
            app.router.add_post(path, self.generate)
        app.router.add_route("*", "/{tail:.*}", self.passthrough)
        return app

    async def health(self, _: web.Request) -> web.Response:
        """The local engine's health: this pod serves only what that engine can, so a
        readiness probe (or the EPP) must see it down when the engine is."""
        status, _body = await self._engine_get("/health")
        if status != 200:
            return _error(503, f"decoder at {self.decoder} is not healthy ({status or 'down'})")
        return web.Response(status=200)

    async def metrics_page(self, _: web.Request) -> web.Response:
        """The engine's metrics followed by the sidecar's own: the EPP scrapes the pool's
        target port (this one) for vllm:* gauges, and Prometheus gets both in one scrape.
        An engine that does not answer makes this a 503: a 200 with only our own metrics
        had the EPP count a dead decoder ready and send it requests (502s)."""
        status, engine = await self._engine_get("/metrics")
        if status != 200:
            return _error(
                503, f"decoder at {self.decoder} metrics unavailable ({status or 'down'})"
            )
        return web.Response(
            body=engine + generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _engine_get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of a GET on the local engine; (0, b"") when it does not answer."""
        assert self.http is not None
        try:
            async with self.http.get(
                self.decoder + path,
                ssl=self.decoder_ssl,
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return 0, b""

    async def _model_cards(self) -> list[dict[str, Any]]:
        """The local engine's model cards: the decode engine's limits are the ones to meet."""
        assert self.http is not None
        async with self.http.get(
            f"{self.decoder}/v1/models",
            ssl=self.decoder_ssl,
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:
            resp.raise_for_status()
            cards: list[dict[str, Any]] = (await resp.json())["data"]
            return cards

    # --- plain proxy ----------------------------------------------------------------------
    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return await self._relay(
            request, request.method, request.path_qs, body, _headers(request.headers)
        )

    async def _relay(
        self,
        request: web.Request,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        started: float | None = None,
        decoder: str | None = None,
        cached: int | None = None,
        where: Where | None = None,
    ) -> web.StreamResponse:
        """Send to the local engine (or the data-parallel rank's) and stream its answer back
        as it arrives; with `cached`, the prefiller's cache hits go in its usage."""
        assert self.http is not None
        url = (decoder or self.decoder) + path
        rid = headers.get(wire.REQUEST_ID_HEADER)
        attempt = Attempt(self.decode_timeouts)
        try:
            upstream = await attempt.open(
                self.http.request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    ssl=self.decoder_ssl,
                    timeout=self.decode_timeouts.client_timeout(),
                )
            )
        except TimeoutError as err:  # before aiohttp's ClientError: its timeouts are both
            return self._timed_out(path, rid, attempt, err)
        except (aiohttp.ClientError, OSError) as err:
            event(
                log,
                "decoder_unreachable",
                logging.WARNING,
                request_id=rid,
                path=path,
                decoder=url,
                error=repr(err),
            )
            return _error(502, "the decode engine is unreachable")
        async with upstream:
            sse = upstream.content_type == "text/event-stream"
            if not sse and upstream.content_length is not None:
                try:
                    body = await upstream.read()  # a whole answer: one write, no chunked framing
                except TimeoutError as err:
                    return self._timed_out(path, rid, attempt, err)
                except (aiohttp.ClientError, OSError) as err:
                    return self._broke_off(path, err)
                if started is not None:
                    self.metrics.ttft.observe(time.perf_counter() - started)
                if cached is not None:
                    body = usage.rewrite_json(body, cached)
                return web.Response(
                    status=upstream.status, body=body, headers=_headers(upstream.headers)
                )
            resp = web.StreamResponse(status=upstream.status, headers=_headers(upstream.headers))
            try:
                rewriter = None if cached is None else usage.SseRewriter(cached)
                failed = await self._stream(
                    resp, request, upstream, path, sse, started, rewriter, attempt
                )
                if where is not None:
                    where.failed = failed
            except ConnectionResetError:
                if not _client_gone(request):
                    raise
                # The client left between two chunks, before aiohttp cancelled this handler:
                # leaving the `async with` drops the engine's connection, which aborts there.
                event(
                    log,
                    "client_disconnected",
                    request_id=rid,
                    path=path,
                    phase="passthrough" if where is None else where.phase,
                )
            return resp

    async def _stream(
        self,
        resp: web.StreamResponse,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        path: str,
        sse: bool,
        started: float | None,
        rewriter: usage.SseRewriter | None,
        attempt: Attempt,
    ) -> str | None:
        """Copy an answer as it arrives; what cut it short on the engine's side, if anything.
        A write to a client that has gone raises ConnectionResetError; a read from an engine
        that died, ClientPayloadError."""
        failed = None
        await resp.prepare(request)
        first = True
        try:
            async for data in upstream.content.iter_any():
                if first and started is not None:
                    self.metrics.ttft.observe(time.perf_counter() - started)
                first = False
                out = data if rewriter is None else rewriter.feed(data)
                if out:
                    await resp.write(out)
            rest = b"" if rewriter is None else rewriter.flush()
            if rest:
                await resp.write(rest)
        except TimeoutError as err:  # the engine went silent mid-answer
            failed = "timed out mid-answer"
            rid = request.headers.get(wire.REQUEST_ID_HEADER)
            self._timed_out(path, rid, attempt, err)
            if sse:
                error = wire.error_body("the decode engine timed out mid-answer", 504)
                await resp.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
        except aiohttp.ClientPayloadError as err:  # the engine died mid-answer
            failed = "broke off mid-answer"
            self._broke_off(path, err)
            if sse:  # the status is sent: end the stream as vLLM ends a failed one
                error = wire.error_body("the decode engine broke off mid-answer", 502)
                await resp.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return failed

    def _timed_out(
        self, path: str, rid: str | None, attempt: Attempt, err: BaseException
    ) -> web.Response:
        """A hung engine costs its request a 504, not a hang as long as the engine's; the
        engine's address is in the log line only."""
        which = attempt.which(err)
        event(
            log,
            "decoder_timed_out",
            logging.WARNING,
            request_id=rid,
            path=path,
            decoder=self.decoder,
            timeout=which,
            error=repr(err),
        )
        return _error(504, f"the decode engine timed out ({which})")

    def _broke_off(self, path: str, err: BaseException) -> web.Response:
        event(
            log,
            "decoder_broke_off",
            logging.WARNING,
            path=path,
            decoder=self.decoder,
            error=str(err),
        )
        return _error(502, "the decode engine broke off mid-answer")

    # --- P/D --------------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        """A client that leaves at any point is one line under its request id; a lease its
        prefill leg took is released (kv_release.py)."""
        rid = _request_id(request.headers.get(wire.REQUEST_ID_HEADER))
        where = Where()
        try:
            return await self._generate(request, rid, where)
        except asyncio.CancelledError:
            if where.phase != "prefill":  # an abandoned prefill leg reports after its grace
                self._client_left(rid, request.path_qs, where)
            raise

    async def _generate(self, request: web.Request, rid: str, where: Where) -> web.StreamResponse:
        started = where.started
        raw = await request.read()
        try:
            named = _prefill_target(request.headers, self.opts.prefiller_sampling)
            decoder = self._rank_decoder(request.headers)
        except ValueError as err:
            self._rejected(request.path_qs, request_id=rid, status=400, reason=str(err))
            return _error(400, str(err))
        headers = _headers(request.headers)
        headers = {k: v for k, v in headers.items() if k.lower() != wire.REQUEST_ID_HEADER}
        headers[wire.REQUEST_ID_HEADER] = rid
        path = request.path_qs
        leg = Leg(request, path, headers, rid, started, decoder, where)
        if named is None and not self._chunks(request.path):
            return await self._decode_only(leg, raw)
        try:
            body = json_body.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            self._rejected(path, request_id=rid, status=400, reason=f"invalid JSON body: {err}")
            return _error(400, f"invalid JSON body: {err}")
        if named is None:
            return await self._decode_only(leg, raw, body)
        _, target = named
        if not self.opts.allow.allows(target):
            self._rejected(
                path,
                request_id=rid,
                prefill_target=target,
                status=403,
                reason="prefill host not in the allow-list",
            )
            return _error(403, f"prefill target {target} is not an allowed prefill host")
        refused = await self._refusal(request.path, body)
        if refused is not None:
            self._rejected(
                path,
                request_id=rid,
                prefill_target=target,
                status=refused.status,
                reason=refused.message,
                param=refused.param,
            )
            return _error(refused.status, refused.message, refused.param)
        return await self._pd(leg, body, target)

    def _chunks(self, path: str) -> bool:
        return self.opts.decode_chunk_size > 0 and path == chunked.PATH

    def _rank_decoder(self, headers: Any) -> str | None:
        """The engine of the data-parallel rank the EPP chose (x-data-parallel-host-port),
        None for this listener's own. ValueError for a rank this pod does not have, which
        upstream answers 400 too."""
        value = headers.get(wire.DATA_PARALLEL_HEADER, "").strip()
        if not value or not self.ranks:
            return None
        try:
            host, port = parse_target(value)
        except ValueError:
            host, port = "", 0
        decoder = self.ranks.get(port)
        if decoder is None or (self.opts.pod_ip and host != self.opts.pod_ip):
            raise ValueError(f"{wire.DATA_PARALLEL_HEADER}: no data-parallel rank at {value!r}")
        return decoder

    async def _decode_only(
        self, leg: Leg, raw: bytes, body: dict[str, Any] | None = None
    ) -> web.StreamResponse:
        self.metrics.requests.labels(leg.path, "decode-only").inc()
        leg.where.phase = "decode-only"
        if body is not None:
            resp = await self._decode(leg, body, None)
        else:
            resp = await self._relay(
                leg.request,
                "POST",
                leg.path,
                raw,
                leg.headers,
                leg.started,
                leg.decoder,
                where=leg.where,
            )
        event(
            log,
            "request",
            request_id=leg.rid,
            path=leg.path,
            outcome="decode-only",
            status=resp.status,
            ms=now_ms(leg.started),
        )
        return resp

    async def _decode(
        self, leg: Leg, body: dict[str, Any], cached: int | None
    ) -> web.StreamResponse:
        """The decode leg: one request, or a chunked decode when that is on."""
        if self._chunks(leg.request.path):
            chunks = chunked.Chunks(body, self.opts.decode_chunk_size)
            if not chunks.fits_one():
                return await self._chunked(leg, chunks, body.get("stream") is True, cached)
        raw = json.dumps(body).encode()
        headers = _json_headers(leg.headers)
        return await self._relay(
            leg.request, "POST", leg.path, raw, headers, leg.started, leg.decoder, cached, leg.where
        )

    async def _chunked(
        self, leg: Leg, chunks: chunked.Chunks, stream: bool, cached: int | None
    ) -> web.StreamResponse:
        """Run a chunked decode; a chunk the engine fails is the client's answer (or, once a
        stream has started, an error event and [DONE]). A stream starts with the first
        chunk's answer, so a first chunk that fails keeps its status, as upstream's."""
        resp: web.StreamResponse | None = None
        if stream:
            sse = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            resp = web.StreamResponse(headers=sse)
        while (body := chunks.next_body()) is not None:
            failed, answer = await self._chunk(leg, body)
            if failed is not None:
                started = resp is not None and resp.prepared
                return await _chunk_failed(resp if started else None, failed)
            chunks.add(answer)
            if resp is not None:
                if not resp.prepared:
                    await resp.prepare(leg.request)
                await resp.write(chunked.sse_event(answer))
        last = {"usage": chunks.usage(), "choices": []} if resp is not None else chunks.whole()
        if cached is not None:
            usage.set_cached_tokens(last, cached)
        if resp is None:
            return web.json_response(last)
        if not resp.prepared:  # the budget allowed no chunk at all
            await resp.prepare(leg.request)
        await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _chunk(
        self, leg: Leg, body: dict[str, Any]
    ) -> tuple[web.Response | None, dict[str, Any]]:
        """One chunk, unstreamed and read whole: (None, its answer), or (the response to
        fail with, {}): the engine's own error, or a vLLM-shaped 502/504."""
        assert self.http is not None
        attempt = Attempt(self.decode_timeouts)
        try:
            up = await attempt.open(
                self.http.post(
                    (leg.decoder or self.decoder) + leg.path,
                    json=body,
                    headers=_json_headers(leg.headers),
                    ssl=self.decoder_ssl,
                    timeout=self.decode_timeouts.client_timeout(),
                )
            )
            async with up:
                payload = await up.read()
                status, content_type = up.status, up.content_type or "application/json"
        except TimeoutError as err:
            return self._timed_out(leg.path, leg.rid, attempt, err), {}
        except (aiohttp.ClientError, OSError) as err:
            return self._broke_off(leg.path, err), {}
        if status != 200:
            return web.Response(status=status, body=payload, content_type=content_type), {}
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return _error(502, "the decode engine answered a chunk with no JSON object"), {}
        return None, answer

    async def _refusal(self, path: str, body: dict[str, Any]) -> ApiError | None:
        """What the decode engine would refuse, found before the prefill leg is spent on it."""
        model = body.get("model")
        limit = await self.limits.get(model if isinstance(model, str) else None)
        try:
            check(body, path == "/v1/chat/completions", limit)
        except ApiError as err:
            return err
        return None

    async def _pd(self, leg: Leg, body: dict[str, Any], target: str) -> web.StreamResponse:
        t0 = time.perf_counter()
        leg.where.phase = "prefill"
        prefilled = await self._prefill_guarded(leg, body, target)
        if isinstance(prefilled, web.Response):
            return prefilled  # the prefiller's 4xx (or, with retries, its last error)
        answer, reason = prefilled
        prefill_s = time.perf_counter() - t0
        self.metrics.prefill.observe(prefill_s)
        cached: int | None = None
        if reason is not None:
            self.metrics.fallbacks.labels(reason.split(":")[0]).inc()
            decode_body: dict[str, Any] = body
            outcome = "fallback"
        else:
            decode_body = legs.decode_body(body, answer, self.opts.connector)
            cached = usage.prefill_cached_tokens(answer)
            outcome = "pd"
        self.metrics.requests.labels(leg.path, outcome).inc()
        kv = self._unclaimed_handle(answer) if reason is None else None
        leg.where.phase, leg.where.kv = "decode", kv
        t1 = time.perf_counter()
        resp = await self._decode(leg, decode_body, cached)
        failed = f"answered {resp.status}" if resp.status != 200 else leg.where.failed
        if kv is not None and failed is not None:
            # A decode engine that is down, or refused or failed the leg, may never pull.
            await kv_release.release(leg.rid, kv, f"the decode leg {failed}")
        self.metrics.decode.observe(time.perf_counter() - t1)
        event(
            log,
            "request",
            request_id=leg.rid,
            path=leg.path,
            outcome=outcome,
            prefill_target=target,
            kv_handle=legs.handle_summary(answer.get("kv_transfer_params")),
            fallback_reason=reason,
            status=resp.status,
            cached_tokens=cached,
            prefill_ms=round(prefill_s * 1000, 3),
            decode_ms=now_ms(t1),
            total_ms=now_ms(leg.started),
        )
        return resp

    def _unclaimed_handle(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        if not self.opts.release_unclaimed_kv or self.opts.connector == "lmcache":
            return None
        return kv_release.handle(answer)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _client_left(self, rid: str, path: str, where: Where) -> None:
        """The client went away (aiohttp cancelled the handler): one line, and the lease the
        decode engine may never claim is released in the background."""
        self.metrics.requests.labels(path, "client-aborted").inc()
        event(
            log,
            "client_disconnected",
            request_id=rid,
            path=path,
            phase=where.phase,
            kv_handle=legs.handle_summary(where.kv),
            ms=now_ms(where.started),
        )
        if where.kv is not None:
            reason = f"client disconnected during {where.phase}"
            self._spawn(kv_release.release(rid, where.kv, reason))

    async def _prefill_guarded(
        self, leg: Leg, body: dict[str, Any], target: str
    ) -> tuple[dict[str, Any], str | None] | web.Response:
        """The prefill leg, which a client leaving does not simply drop (ABANDON_GRACE)."""
        task = asyncio.get_running_loop().create_task(self._prefill(leg, body, target))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._spawn(self._prefill_abandoned(leg, task))
            raise

    async def _prefill_abandoned(
        self, leg: Leg, task: asyncio.Task[tuple[dict[str, Any], str | None] | web.Response]
    ) -> None:
        try:  # past the grace, wait_for cancels the leg: the prefiller aborts the request
            prefilled = await asyncio.wait_for(task, ABANDON_GRACE)
        except (TimeoutError, asyncio.CancelledError):
            prefilled = None
        answer = prefilled[0] if isinstance(prefilled, tuple) else {}
        leg.where.kv = self._unclaimed_handle(answer)
        self._client_left(leg.rid, leg.path, leg.where)

    async def _prefill(
        self, leg: Leg, body: dict[str, Any], target: str
    ) -> tuple[dict[str, Any], str | None] | web.Response:
        """The prefill leg: (the prefiller's answer, None); or ({}, why decode-only must do
        it all) when the prefiller failed on its side and retries are off; or a response for
        the client: the prefiller's own 4xx (a request it rejects would be rejected by the
        decoder too), or, with retries on, the failure that outlived them, as upstream's."""
        retries = self.opts.prefill_max_retries
        leg_body = legs.prefill_body(body, self.opts.connector)
        attempt = 0
        while True:
            status, payload, content_type, reason = await self._prefill_once(leg, leg_body, target)
            if 200 <= status < 300:
                return _prefill_answer(payload)
            if 400 <= status < 500:
                self._rejected(
                    leg.path,
                    request_id=leg.rid,
                    prefill_target=target,
                    status=status,
                    reason="the prefiller refused the request",
                    outcome="prefill-rejected",
                )
                return web.Response(status=status, body=payload, content_type=content_type)
            if not retries:
                return {}, reason
            if status not in RETRYABLE or attempt >= retries:
                return self._prefill_failed(leg, target, status, payload, content_type, reason)
            attempt += 1
            self.metrics.prefill_retries.inc()
            event(
                log,
                "prefill_retry",
                logging.WARNING,
                request_id=leg.rid,
                prefill_target=target,
                attempt=attempt,
                previous=reason,
            )
            await asyncio.sleep(self.opts.prefill_retry_backoff)

    async def _prefill_once(
        self, leg: Leg, leg_body: dict[str, Any], target: str
    ) -> tuple[int, bytes, str, str]:
        """(status, body, content type, what went wrong); a prefiller that does not answer
        is a 502 (a 504 when it timed out) with a vLLM-shaped body, as a proxy answers."""
        assert self.http is not None
        scheme = "https" if self.opts.prefiller_tls else "http"
        attempt = Attempt(self.prefill_timeouts)
        try:
            pre = await attempt.open(
                self.http.post(
                    f"{scheme}://{target}{leg.path}",
                    json=leg_body,
                    headers=_json_headers(leg.headers),
                    allow_redirects=False,
                    ssl=self.prefiller_ssl,
                    timeout=self.prefill_timeouts.client_timeout(),
                )
            )
            async with pre:
                payload = await pre.read()
                content_type = pre.content_type or "application/json"
                return pre.status, payload, content_type, f"prefiller answered {pre.status}"
        except TimeoutError as err:
            which = attempt.which(err)
            status, reason = 504, f"prefiller timed out: {which}"
            message = f"the prefill engine timed out ({which})"
            event(
                log,
                "prefiller_timed_out",
                logging.WARNING,
                request_id=leg.rid,
                prefill_target=target,
                timeout=which,
            )
        except (aiohttp.ClientError, OSError) as err:  # no internal address for the client
            status, reason, message = 502, f"prefiller unreachable: {err}", _UNREACHABLE
        body = json.dumps(wire.error_body(message, status)).encode()
        return status, body, "application/json", reason

    def _prefill_failed(
        self, leg: Leg, target: str, status: int, payload: bytes, content_type: str, reason: str
    ) -> web.Response:
        self.metrics.requests.labels(leg.path, "prefill-failed").inc()
        event(
            log,
            "request",
            logging.WARNING,
            request_id=leg.rid,
            path=leg.path,
            outcome="prefill-failed",
            prefill_target=target,
            status=status,
            reason=reason,
            retries=self.opts.prefill_max_retries,
        )
        return web.Response(status=status, body=payload, content_type=content_type)

    def _rejected(self, path: str, outcome: str = "rejected", **fields: Any) -> None:
        """A request answered with an error before any leg ran (or by the prefiller's): counted
        as rejected, and one line under its request id."""
        self.metrics.requests.labels(path, "rejected").inc()
        event(log, "request", logging.WARNING, path=path, outcome=outcome, **fields)


_UNREACHABLE = "the prefill engine is unreachable"


@dataclass
class Where:
    """How far a client request got, for the line (and the release) when its client leaves."""

    phase: str = "request"  # request | prefill | decode | decode-only
    kv: dict[str, Any] | None = None  # the prefill's KV handle, once it is the sidecar's
    failed: str | None = None  # what cut a started decode answer short on the engine's side
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Leg:
    """What every leg of one client request shares."""

    request: web.Request
    path: str
    headers: dict[str, str]
    rid: str
    started: float
    decoder: str | None  # the data-parallel rank's engine; None: this listener's
    where: Where = field(default_factory=Where)


def _prefill_answer(payload: bytes) -> tuple[dict[str, Any], str | None]:
    """A 200 from the prefiller that is no JSON object has no KV handle: decode-only."""
    try:
        answer = json_body.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        return {}, f"prefiller answered invalid JSON: {err}"
    if not isinstance(answer, dict):
        return {}, "prefiller answered JSON that is not an object"
    return answer, None


def _prefill_target(headers: Any, sampling: bool = False) -> tuple[str, str] | None:
    """(host, "host:port") of the prefill pod the EPP named, or None for decode-only.

    The header may name several targets (several values, or one comma-separated value):
    the first is taken, or with --enable-prefiller-sampling one at random, as upstream.

    Only a bare host:port is taken (the legacy URL header may add a scheme): with a user
    part, `10.0.0.5:8000@elsewhere` would pass an allow-list check on 10.0.0.5 and then
    connect elsewhere. ValueError names the header and the value when it is anything else.
    """
    name, value = wire.PREFILLER_HEADER, _pick(headers, wire.PREFILLER_HEADER, sampling)
    if not value:
        name, value = wire.PREFILLER_URL_HEADER, _pick(headers, wire.PREFILLER_URL_HEADER, sampling)
        if not value:
            return None
    parts = urlsplit(
        value if name == wire.PREFILLER_URL_HEADER and "://" in value else "//" + value
    )
    try:
        port = parts.port
    except ValueError:
        port = None
    extra = parts.username is not None or parts.path not in ("", "/") or parts.query
    if port is None or not parts.hostname or extra or parts.fragment:
        raise ValueError(f"{name}: expected host:port, got {value!r}")
    host = parts.hostname
    return host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pick(headers: Any, name: str, sampling: bool) -> str:
    values = headers.getall(name, []) if hasattr(headers, "getall") else [headers.get(name, "")]
    if len(values) == 1:
        values = values[0].split(",")
    values = [v.strip() for v in values]
    if not any(values):
        return ""
    return random.choice(values) if sampling else values[0]


async def _chunk_failed(
    stream: web.StreamResponse | None, failed: web.Response
) -> web.StreamResponse:
    if stream is None:
        return failed
    error = failed.body if isinstance(failed.body, bytes) else b"{}"
    await stream.write(b"data: " + error + b"\n\n")
    await stream.write(b"data: [DONE]\n\n")
    await stream.write_eof()
    return stream


def _client_gone(request: web.Request) -> bool:
    """Whether a reset is the client's: one from the engine's side must not be logged as a
    client that left."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _client_ssl(tls: bool, insecure: bool) -> ssl.SSLContext | bool:
    return client_context(insecure) if tls else False


def _json_headers(headers: dict[str, str]) -> dict[str, str]:
    """The legs send JSON whatever the client declared (curl -d says form-urlencoded)."""
    out = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    out["content-type"] = "application/json"
    return out


async def serve(
    sidecar: Sidecar, host: str, ssl_ctx: ssl.SSLContext | None, stop: asyncio.Event
) -> None:
    """Every data-parallel rank's listener, until `stop`; rank 0's opens last, so a probe
    that finds it ready finds every rank ready."""
    runners = []
    try:
        for port, each in [*sidecar.rank_listeners(), (sidecar.opts.port, sidecar)]:
            runner = web.AppRunner(each.app(), access_log=None, handler_cancellation=True)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024).start()
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
