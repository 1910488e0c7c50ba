"""Names shared by test modules (conftest modules cannot import each other by name)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pdserve.process import ManagedProcess

REPO = Path(__file__).resolve().parents[1]
# Upstream files (samples, CRDs, EPP configs), read where they lie and never copied into the
# repository. Only tests marked `conformance` may read them; tests/conftest.py runs that
# group when the folder is there and says why not when it is missing.
REFERENCE = REPO.parent / "shared" / "reference"
PDSERVE = [sys.executable, "-m", "pdserve"]

Spawn = Callable[..., ManagedProcess]


class FakePods:
    """A pool_pods.PodSource replaying scripts of events; an exception in place of a script
    breaks the stream there, as a lost API connection does, and the next call resumes."""

    def __init__(self, *scripts: list[tuple[str, dict[str, Any]]] | Exception) -> None:
        self.scripts = list(scripts)

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while self.scripts:
            script = self.scripts.pop(0)
            if isinstance(script, Exception):
                raise script
            yield from script


def nested(depth: int) -> dict[str, Any]:
    """`{"a": {"a": ...}}`, `depth` deep: past what recursive code (copying, validating) goes."""
    out: dict[str, Any] = {}
    inner = out
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return out


def vllm_error(resp: Any, status: int) -> dict[str, Any]:
    """The error of an httpx response, once checked to be vLLM's shape whole:
    {"error": {message, type, param, code}}, code the status."""
    from pdserve import wire

    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status and body["error"]["type"] == wire.error_type(status)
    error: dict[str, Any] = body["error"]
    return error


def log_events(log: Path, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of a component's log file whose event is `name`, in order."""
    import json

    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            out.append(record)
    return out


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` at url/metrics whose labels include `labels`."""
    import httpx

    return metric_in(httpx.get(f"{url}/metrics").text, name, **labels)


def metric_in(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` in a metrics page whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def reset_after_first_event(port: int, host: str, request_id: str) -> None:
    """Stream a long completion from 127.0.0.1:port and reset the connection once its first
    SSE event arrived, as a client killed mid-answer does (RST, not FIN)."""
    import asyncio
    import json
    import socket
    import struct

    body = json.dumps({"prompt": "long", "max_tokens": 300, "ignore_eos": True, "stream": True})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"x-request-id: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    while not (line := await asyncio.wait_for(reader.readline(), 10)).startswith(b"data: {"):
        assert line, "the stream ended before its first event"
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


# Tests marked `no_stranded_kv` (a fault test) end with every sim engine still running
# holding no KV lease and no KV block: a fault must not leave blocks behind (issue 13).
NO_STRANDED_KV = "no_stranded_kv"


def assert_no_stranded_kv(urls: list[str], within: float = 2.0) -> None:
    """Every engine at `urls` back to zero leases and zero KV usage within `within` s."""
    import time

    deadline = time.monotonic() + within
    while True:
        held = {
            u: (metric(u, "pdserve_sim:kv_leases"), metric(u, "vllm:kv_cache_usage_perc"))
            for u in urls
        }
        if all(leases == 0 and usage == 0 for leases, usage in held.values()):
            return
        assert time.monotonic() < deadline, f"KV still held {within}s after the test: {held}"
        time.sleep(0.05)  # polling the engines' gauges, bounded by the deadline


def post_until(
    url: str, body: dict[str, Any], stop: threading.Event, seen: list[int | str]
) -> None:
    """One client posting a completion until told to stop: each answer's status (with its
    body unless a success), or its error's name, so a test under faults sees every outcome."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            try:
                r = http.post("/v1/completions", json=body)
                seen.append(r.status_code if r.is_success else f"{r.status_code} {r.text}")
            except httpx.HTTPError as err:
                seen.append(type(err).__name__)
