"""The load generator: streams each planned request and times its tokens as they arrive.

Light on purpose (aiohttp and json, no tokenizer, no openai SDK): the client shares the
machine with the service under test and must not become what is measured (aiohttp streams a
request for less than half of httpx's CPU: bench/bench_client_speed.py). Timings are taken
when a chunk is read, so TTFT includes the service's queueing, prefill and network;
inter-token latencies are the gaps between content chunks, as vLLM's benchmark counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pdserve import wire
from pdserve.bench.generator import PlannedRequest

DRAIN_S = 1.0  # how long to wait for a stream's end after its [DONE]


@dataclass
class Result:
    """One request's measurements; `error` is a kind (`http_503`, `timeout`, `connection`,
    `stream`) and the timings are then whatever was measured before it failed."""

    planned: PlannedRequest
    sent_s: float
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    e2e_ms: float = 0.0
    output_tokens: int = 0
    error: str | None = None
    request_id: str = ""


@dataclass
class Target:
    base_url: str
    model: str
    ignore_eos: bool = True
    timeout_s: float = 300.0
    run_id: str = "run"


def request_id(target: Target, planned: PlannedRequest) -> str:
    """The x-request-id sent: pdserve's components log it, so --trace-dir can find each
    request's routing afterwards; the run id keeps two runs' requests apart in one log."""
    return f"bench-{target.run_id}-{planned.index}"


def body(target: Target, planned: PlannedRequest) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body of a planned request."""
    data: dict[str, Any] = {
        "model": planned.model or target.model,
        "max_tokens": planned.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if target.ignore_eos:
        data["ignore_eos"] = True
    if planned.messages is not None:
        data["messages"] = planned.messages
        return "/v1/chat/completions", data
    data["prompt"] = planned.prompt or ""
    return "/v1/completions", data


def _content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if (delta and delta.get("content")) or choice.get("text"):
            return True
    return False


async def send(
    client: aiohttp.ClientSession, target: Target, planned: PlannedRequest, origin: float
) -> Result:
    start = time.perf_counter()
    result = Result(planned, start - origin, request_id=request_id(target, planned))
    try:
        async with asyncio.timeout(target.timeout_s):
            await _stream(client, target, planned, start, result)
    except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
        result.error = "timeout"
    except aiohttp.ClientError:
        result.error = "connection"
    result.e2e_ms = (time.perf_counter() - start) * 1000.0
    return result


async def _stream(
    client: aiohttp.ClientSession,
    target: Target,
    planned: PlannedRequest,
    start: float,
    result: Result,
) -> None:
    path, data = body(target, planned)
    headers = {wire.REQUEST_ID_HEADER: result.request_id}
    async with client.post(target.base_url + path, json=data, headers=headers) as response:
        if response.status != 200:
            await response.read()
            result.error = f"http_{response.status}"
            return
        last = start
        chunks = 0
        usage: dict[str, Any] | None = None
        done = False
        try:
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:  # not JSON, or not UTF-8
                    result.error = "stream"
                    return
                if "error" in chunk:
                    result.error = "stream"
                    return
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if _content(chunk):
                    now = time.perf_counter()
                    if result.ttft_ms is None:
                        result.ttft_ms = (now - start) * 1000.0
                    else:
                        result.itl_ms.append((now - last) * 1000.0)
                    last = now
                    chunks += 1
        except ValueError:  # a line longer than the read buffer
            result.error = "stream"
            return
        if not done:
            result.error = "stream"
            return
        # Read on to the end of the body: a connection dropped after [DONE] but before the
        # stream's last chunk is a client leaving early to the service (the sidecar logs it
        # so, instead of its request line) and cannot be reused for the next request. Not
        # for long: the answer is complete, and a server that keeps the stream open must not
        # turn it into a timeout.
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await response.read()
        tokens = usage.get("completion_tokens") if usage else None
        result.output_tokens = int(tokens) if isinstance(tokens, int) else chunks


def http_client(connections: int | None = None) -> aiohttp.ClientSession:
    # No pool limit by default: an open-loop run must not queue requests in the client,
    # where the wait would be counted as the service's TTFT. Idle connections are kept
    # (aiohttp's keep-alive) and reused by later requests.
    connector = aiohttp.TCPConnector(limit=connections or 0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


@dataclass
class Counters:
    """What the progress line shows."""

    sent: int = 0
    done: int = 0
    errors: int = 0


async def open_loop(
    target: Target,
    plan: Iterator[PlannedRequest],
    counters: Counters,
    on_result: Callable[[Result], None],
) -> None:
    """Send each request at its planned offset, whatever is still in flight."""
    async with http_client() as client:
        origin = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()

        async def one(planned: PlannedRequest) -> None:
            on_result(await send(client, target, planned, origin))

        for planned in plan:
            delay = origin + planned.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            counters.sent += 1
            task = asyncio.create_task(one(planned))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)


async def closed_loop(
    target: Target,
    plan: Iterator[PlannedRequest],
    concurrency: int,
    duration_s: float,
    counters: Counters,
    on_result: Callable[[Result], None],
) -> None:
    """`concurrency` users, each sending its next request when its last one finished, until
    `duration_s` has passed (requests in flight then are finished, not cut)."""
    async with http_client(concurrency) as client:
        origin = time.perf_counter()

        async def user() -> None:
            while time.perf_counter() - origin < duration_s:
                planned = next(plan, None)
                if planned is None:
                    return
                counters.sent += 1
                on_result(await send(client, target, planned, origin))

        await asyncio.gather(*(user() for _ in range(concurrency)))
