from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from pdserve import wire
from pdserve.process import ManagedProcess, free_port
from testkit import NO_STRANDED_KV, PDSERVE, Spawn, assert_no_stranded_kv

NIXL = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})


@dataclass
class Server:
    proc: ManagedProcess
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


@pytest.fixture
def sim(spawn: Spawn, request: pytest.FixtureRequest):
    started: list[Server] = []

    def start(*args: str, port: int | None = None) -> Server:
        port = port or free_port()
        proc = spawn(
            f"sim-{port}",
            [
                *PDSERVE,
                "sim-engine",
                "--port",
                str(port),
                "--served-model-name",
                "sim",
                "--kv-transfer-config",
                NIXL,
                *args,
            ],
        )
        server = Server(proc, port, "https" if "--ssl-certfile" in args else "http")
        proc.wait_http(f"{server.url}/health", timeout=60, verify=False)
        started.append(server)
        return server

    yield start
    if request.node.get_closest_marker(NO_STRANDED_KV):
        live = [s.url for s in started if s.proc.alive() and s.scheme == "http"]
        assert_no_stranded_kv(live)


@pytest.fixture
def sidecar(spawn: Spawn):
    def start(
        vllm_port: int,
        *args: str,
        tls: bool = False,
        engine: bool = True,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Server:
        port = port or free_port()
        argv = [
            *PDSERVE,
            "sidecar",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--vllm-port",
            str(vllm_port),
            *args,
        ]
        if not tls:
            argv.append("--secure-proxy=false")
        proc = spawn(f"sidecar-{port}", argv, env={**os.environ, **(env or {})})
        server = Server(proc, port, "https" if tls else "http")
        if engine:
            proc.wait_http(f"{server.url}/health", timeout=30, verify=False)
        else:  # no engine: /health is a 503 once the sidecar serves
            _wait_status(f"{server.url}/health", 503, proc)
        return server

    return start


def _wait_status(url: str, status: int, proc: ManagedProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proc.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, verify=False).status_code == status:
                return
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.05)


@dataclass
class Recorder:
    """A real HTTP hop that records what it was sent and forwards to an engine."""

    upstream: str
    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    streams: list[bytes] = field(default_factory=list)  # each streamed answer, whole
    headers: list[dict[str, str]] = field(default_factory=list)
    content_types: list[list[str]] = field(default_factory=list)  # every value, in order
    fail_with: int | None = None
    fail_times: int = 0  # with fail_with: fail only the first this many POSTs (0: all)
    stall: bool = False
    break_off: str | None = None  # "sse" | "whole": answer part of the body, then hang up
    hang_mid: str | None = None  # "sse" | "whole": answer part of the body, then go silent
    delay: float = 0.0  # seconds before forwarding: an unstreamed answer's quiet wait
    answer_with: Any = None  # answer 200 with this JSON instead of forwarding

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            async with (
                aiohttp.ClientSession() as http,
                http.get(self.upstream + request.path) as up,
            ):
                return web.Response(
                    status=up.status, body=await up.read(), content_type=up.content_type
                )
        body = await request.json()
        self.seen.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        self.content_types.append(request.headers.getall("content-type", []))
        if self.stall:
            await asyncio.sleep(3600)
        if self.break_off or self.hang_mid:
            return await self._break_off(request)
        await asyncio.sleep(self.delay)
        if self.answer_with is not None:
            return web.json_response(self.answer_with)
        if self.fail_with and (not self.fail_times or len(self.seen) <= self.fail_times):
            return web.json_response(wire.error_body("boom", self.fail_with), status=self.fail_with)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.upstream + request.path,
                json=body,
                headers={"x-request-id": request.headers.get("x-request-id", "")},
            ) as up,
        ):
            if not body.get("stream"):
                data = await up.read()
                if up.status == 200:
                    self.answers.append(json.loads(data))
                return web.Response(status=up.status, body=data, content_type="application/json")
            resp = web.StreamResponse(
                status=up.status, headers={"Content-Type": "text/event-stream"}
            )
            await resp.prepare(request)
            sent = b""
            async for chunk in up.content.iter_any():
                sent += chunk
                await resp.write(chunk)
            self.streams.append(sent)
            await resp.write_eof()
            return resp

    async def _break_off(self, request: web.Request) -> web.StreamResponse:
        """An engine that dies mid-answer: headers and a first piece, then the socket closes
        (break_off) or stays open and silent (hang_mid)."""
        sse = (self.break_off or self.hang_mid) == "sse"
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if sse else "application/json"}
        )
        if not sse:
            resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'data: {"choices": []}\n\n' if sse else b'{"id": "cmpl-')
        if self.hang_mid:
            await asyncio.sleep(3600)
        assert request.transport is not None
        request.transport.close()
        return resp


@pytest.fixture
def recorder() -> Iterator:
    loops: list[tuple[asyncio.AbstractEventLoop, threading.Thread, web.AppRunner]] = []
    runners: list[web.AppRunner] = []

    def start(upstream: str) -> Recorder:
        rec = Recorder(upstream)
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def boot() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", rec.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            rec.port = site._server.sockets[0].getsockname()[1]
            ready.set()

        thread = threading.Thread(
            target=lambda: (loop.run_until_complete(boot()), loop.run_forever()), daemon=True
        )
        thread.start()
        assert ready.wait(10)
        loops.append((loop, thread, runners[-1]))
        return rec

    yield start
    for loop, thread, runner in loops:
        asyncio.run_coroutine_threadsafe(_shutdown(runner), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _shutdown(runner: web.AppRunner) -> None:
    """Cancel in-flight handlers (a stalled one sleeps for an hour) before cleaning up, so
    no coroutine is left to be collected after its loop has closed."""
    handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await runner.cleanup()
