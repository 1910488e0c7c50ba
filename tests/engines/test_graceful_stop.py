"""SIGTERM drains: the sim engine and the sidecar stop taking connections at once and let an
answer in flight finish (the runner's `down` and `scale` give them 15 s and 120 s)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from pdserve.process import free_port
from testkit import PDSERVE, Spawn


def stream_tokens(url: str, out: dict[str, object]) -> None:
    """A streamed completion read to its end; its tokens and whether [DONE] came."""
    body = {"model": "sim", "prompt": "drain me", "max_tokens": 60, "ignore_eos": True,
            "stream": True}  # fmt: skip
    tokens, done = 0, False
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: ") and _text(json.loads(line[6:])):
                    tokens += 1
                    out["tokens"] = tokens
    except httpx.HTTPError as err:
        out["error"] = repr(err)
    out["done"] = done


@pytest.mark.parametrize("front", ["engine", "sidecar"])
def test_sigterm_finishes_the_answer_in_flight_and_refuses_new_ones(
    spawn: Spawn, tmp_path, front: str
) -> None:
    slow = tmp_path / "slow.yaml"
    slow.write_text("decode_base_ms: 25\n")  # 60 tokens: about 1.5 s
    port = free_port()
    engine = spawn("engine", [*PDSERVE, "sim-engine", "--port", str(port),
                              "--served-model-name", "sim", "--profile", str(slow)])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    engine.wait_http(f"{url}/health", 60)
    target = engine
    if front == "sidecar":
        side = free_port()
        target = spawn("sidecar", [*PDSERVE, "sidecar", "--host", "127.0.0.1", "--port",
                                   str(side), "--model-server-port", str(port),
                                   "--secure-proxy=false"])  # fmt: skip
        url = f"http://127.0.0.1:{side}"
        target.wait_http(f"{url}/health", 60)
    out: dict[str, object] = {}
    reader = threading.Thread(target=stream_tokens, args=(url, out))
    reader.start()
    deadline = time.monotonic() + 10
    while not out.get("tokens"):  # the answer is under way
        assert time.monotonic() < deadline and reader.is_alive(), out
        time.sleep(0.01)
    assert target.popen is not None
    os.kill(target.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # the listener closes at once: a new request is refused
        try:
            httpx.get(f"{url}/health", timeout=1)
        except httpx.ConnectError:
            break
        assert time.monotonic() < deadline, "still taking connections after SIGTERM"
        time.sleep(0.02)
    reader.join(20)
    assert out == {"status": 200, "tokens": 60, "done": True}
    target.popen.wait(20)  # and then it exits on its own


def _text(chunk: dict[str, object]) -> bool:
    choices = chunk.get("choices")
    return isinstance(choices, list) and any(c.get("text") for c in choices)
