"""vLLM's OpenAI server over the sim engine: routes, validation errors, SSE and whole answers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pdserve import json_body, wire
from pdserve.engines.sim.engine import SimEngine
from pdserve.engines.sim.openai_api import (
    Params,
    chunk,
    full_response,
    parse,
    tokenize_request,
    usage,
)
from pdserve.engines.sim.openai_api import usage_chunk as make_usage_chunk
from pdserve.engines.sim.scheduler import Request
from pdserve.logs import event
from pdserve.tokenization import Tokenizer, request_tokens
from pdserve.vllm_request import ApiError

log = logging.getLogger("pdserve.sim")


def _tokens_of(tokenizer: Tokenizer, p: Params, special: bool) -> list[int]:
    """As the engine would count the prompt; `special`: the completions prompt's BOS."""
    if isinstance(p.prompt, list):
        return list(p.prompt)
    try:
        if p.chat:
            return request_tokens(tokenizer, "", p.messages)
        return tokenizer.encode_prompt(p.prompt) if special else tokenizer.encode(p.prompt)
    except ValueError as err:  # a chat template that fails
        raise ApiError(400, str(err), "messages") from err


@web.middleware
async def _errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unexpected failures still answer in vLLM's error shape, and the server keeps serving."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return _error(err.status, err.reason)
    except Exception as err:
        log.exception("request_failed", extra={"fields": {"path": request.path}})
        return _error(500, f"{type(err).__name__}: {err}")


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(wire.error_body(message, status, param=param), status=status)


class Api:
    """aiohttp handlers; every failure is a vLLM-shaped error and the server keeps going."""

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_errors_as_json])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ping", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/reset_prefix_cache", self.reset_prefix_cache)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/sim/kv_blocks", self.kv_blocks)
        return app

    async def kv_blocks(self, _: web.Request) -> web.Response:
        """The prefix cache's block hashes: ground truth for KV-event consumers (sim only)."""
        hashes = sorted(h.hex() for h in self.engine.blocks.content())
        return web.json_response({"block_hashes": hashes})

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0+pdserve.sim"})

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.engine.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def reset_prefix_cache(self, _: web.Request) -> web.Response:
        if not self.engine.blocks.reset():
            event(log, "reset_prefix_cache_refused", reason="blocks in use")
        self.engine._observe()
        return web.Response(status=200)

    async def models(self, _: web.Request) -> web.Response:
        cfg = self.engine.cfg
        cards = [
            {
                "id": name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "vllm",
                "root": cfg.model_path or cfg.served_model_name,
                "parent": None,
                "max_model_len": self.engine.max_model_len,
            }
            for name in (cfg.served_model_name, *cfg.aliases)
        ]
        cards += [
            {
                "id": name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "vllm",
                "root": path,
                "parent": cfg.served_model_name,
                "max_model_len": None,
            }
            for name, path in cfg.lora_modules
        ]
        return web.json_response({"object": "list", "data": cards})

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize: a router that tokenizes through the engine counts the engine's
        own tokens, chat template included."""
        try:
            try:
                body = json_body.loads(await request.read())
            except ValueError as err:
                raise ApiError(400, f"Invalid JSON in request body: {err}") from err
            p, special = tokenize_request(body)
            self._lora(p.model)
            tokens = _tokens_of(self.engine.cfg.tokenizer, p, special)
        except ApiError as err:
            return _error(err.status, err.message, err.param)
        return web.json_response(
            {
                "count": len(tokens),
                "max_model_len": self.engine.max_model_len,
                "tokens": tokens,
                "token_strs": None,
            }
        )

    def _lora(self, model: str | None) -> int | None:
        """The LoRA a request's model names (None: the base model), or vLLM's 404."""
        cfg = self.engine.cfg
        lora = cfg.lora_id(model) if model else None
        if model and lora is None and model not in (cfg.served_model_name, *cfg.aliases):
            raise ApiError(404, f"The model `{model}` does not exist.", "model")
        return lora

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        engine = self.engine
        base = request.headers.get(wire.REQUEST_ID_HEADER) or uuid.uuid4().hex
        p: Params | None = None
        try:
            try:
                body = json_body.loads(await request.read())
            except ValueError as err:
                raise ApiError(400, f"Invalid JSON in request body: {err}") from err
            p = parse(body, chat)
            lora = self._lora(p.model)
            prompt = engine.tokenize(p)
            req = engine.new_request(p, prompt, base)
            req.lora_id = lora
            engine.refuse_producer(req)
        except ApiError as err:
            if p is not None and p.kv_transfer_params and engine.cfg.kv_transfer:
                engine.release_unclaimed(p.kv_transfer_params, base, f"rejected: {err.status}")
            return _error(err.status, err.message, err.param)
        queue = engine.submit(req)
        try:
            if p.stream:
                return await self._stream(request, p, req, queue)
            return await self._whole(request, p, req, queue)
        except asyncio.CancelledError:
            engine.undelivered(req)
            raise
        finally:
            engine.forget(req)

    async def _tokens(
        self, p: Params, req: Request, queue: asyncio.Queue[int | None], times: list[float]
    ) -> AsyncIterator[str]:
        """Yield text deltas until the request ends or a stop string appears.

        As vLLM does, the last len(longest stop) - 1 characters are held back while
        streaming: a stop string may span tokens, and what was sent cannot be taken back.
        """
        loop = asyncio.get_running_loop()
        tok = self.engine.cfg.tokenizer
        hold = max((len(s) for s in p.stop), default=1) - 1
        text, sent = "", 0
        while (token := await queue.get()) is not None:
            times.append(loop.time())
            new_from = max(0, len(text) - hold)  # a stop ending in this token starts here or after
            text += tok.decode([token])
            cut = _stop_index(text, p.stop, new_from)
            if cut is not None:
                req.finish_reason = "stop"
                yield text[sent:cut]
                return
            upto = len(text) - hold
            if upto > sent or not hold:
                yield text[sent:upto]
                sent = upto
        if len(text) > sent:
            yield text[sent:]
        if req.error:
            raise ApiError(
                500, f"KV transfer failed and kv_load_failure_policy is fail: {req.error}"
            )

    async def _whole(
        self, request: web.Request, p: Params, req: Request, queue: asyncio.Queue[int | None]
    ) -> web.StreamResponse:
        times: list[float] = []
        try:
            text = "".join([piece async for piece in self._tokens(p, req, queue, times)])
        except ApiError as err:
            return _error(err.status, err.message)
        engine = self.engine
        engine.record_finish(req, asyncio.get_running_loop().time(), times)
        kv = engine.producer_params(req) if req.remote_decode else None
        use = usage(len(req.prompt), len(times), req.cached_tokens)
        self._log(req, times)
        resp = web.json_response(
            full_response(p, req.id, self._model(p), text, req.finish_reason, use, kv)
        )
        if kv is None:
            return resp
        # A KV handle is written here, not after the handler returns, so that a client gone
        # by then is seen (a reset, or this handler cancelled) and its lease freed.
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionResetError:
            engine.undelivered(req)
        return resp

    async def _stream(
        self, request: web.Request, p: Params, req: Request, queue: asyncio.Queue[int | None]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        model, created = self._model(p), int(time.time())
        times: list[float] = []

        async def send(obj: dict[str, Any]) -> None:
            await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")

        try:
            await resp.prepare(request)
            try:
                if p.chat:
                    await send(chunk(p, req.id, model, created, None, role=True))
                async for piece in self._tokens(p, req, queue, times):
                    await send(chunk(p, req.id, model, created, piece))
                await send(chunk(p, req.id, model, created, None, finish=req.finish_reason))
                if p.include_usage:
                    use = usage(len(req.prompt), len(times), req.cached_tokens)
                    await send(make_usage_chunk(p, req.id, model, created, use))
            except ApiError as err:
                await send(wire.error_body(err.message, err.status))
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            return _client_left(resp, req)
        self.engine.record_finish(req, asyncio.get_running_loop().time(), times)
        self._log(req, times)
        try:
            await resp.write_eof()
        except ConnectionResetError:
            return _client_left(resp, req)
        return resp

    def _model(self, p: Params) -> str:
        """The name responses carry: the adapter when one was asked for, as vLLM does."""
        cfg = self.engine.cfg
        return p.model if p.model and cfg.lora_id(p.model) else cfg.served_model_name

    def _log(self, req: Request, times: list[float]) -> None:
        role = "producer" if req.remote_decode else "consumer" if req.remote_prefill else "local"
        now = asyncio.get_running_loop().time()
        event(
            log,
            "request_done",
            request_id=req.id,
            x_request_id=req.external_id,
            pd_role=role,
            ttft_ms=round((times[0] - req.arrival) * 1000, 3) if times else None,
            e2e_ms=round((now - req.arrival) * 1000, 3),
            preemptions=req.preemptions,
            prompt_tokens=len(req.prompt),
            cached_tokens=req.cached_tokens,
            loaded_tokens=req.loaded_tokens,
            completion_tokens=len(times),
            finish_reason=req.finish_reason,
            blocks=len(req.blocks),
        )


def _client_left(resp: web.StreamResponse, req: Request) -> web.StreamResponse:
    """A client that left between two writes, before aiohttp cancelled the handler: one info
    line, no traceback. An unfinished request is aborted by `forget`, as on cancellation."""
    event(log, "client_disconnected", request_id=req.id, x_request_id=req.external_id)
    return resp


def _stop_index(text: str, stops: list[str], start: int = 0) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None
