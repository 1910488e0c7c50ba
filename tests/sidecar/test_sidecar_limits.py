"""The sidecar's bounds: each leg's timeouts against engines that hang, the body limit, and
the in-flight bound; every refusal is quick, in vLLM's error shape, and the sidecar keeps
serving after it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from testkit import log_events, metric, vllm_error

HDR = "x-prefiller-host-port"
BODY = {"prompt": "hello there", "max_tokens": 3}


def _post(url: str, body: dict | None = None, **kw) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    resp = httpx.post(url + "/v1/completions", json=body or BODY, timeout=30, **kw)
    return resp, time.monotonic() - t0


def _timed_out(resp: httpx.Response, which: str) -> str:
    message = vllm_error(resp, 504)["message"]
    assert which in message and "127.0.0.1" not in message, message
    return message


@pytest.mark.parametrize("stream", [False, True])
def test_a_decoder_that_never_answers_is_a_504_after_the_first_byte_timeout(
    sim, sidecar, recorder, stream
) -> None:
    d = sim("--zero-cost")
    rd = recorder(d.url)
    s = sidecar(rd.port, "--first-byte-timeout", "0.5", "--read-timeout", "30")
    rd.stall = True
    resp, took = _post(s.url, {**BODY, "stream": stream}, headers={"x-request-id": "hung-1"})
    assert took < 5
    assert _timed_out(resp, "first byte 0.5s") == "the decode engine timed out (first byte 0.5s)"
    (line,) = log_events(s.proc.log_path, "decoder_timed_out")
    assert line["request_id"] == "hung-1" and line["timeout"] == "first byte 0.5s"
    assert line["decoder"].startswith("http://127.0.0.1:")  # the address is the log's only
    rd.stall = False
    assert _post(s.url, {**BODY, "stream": stream})[0].status_code == 200


@pytest.mark.parametrize("mode", ["whole", "sse"])
def test_a_decoder_silent_mid_answer_is_a_504_after_the_read_timeout(
    sim, sidecar, recorder, mode
) -> None:
    d = sim("--zero-cost")
    rd = recorder(d.url)
    s = sidecar(rd.port, "--read-timeout", "0.5", "--first-byte-timeout", "30")
    rd.hang_mid = mode
    resp, took = _post(s.url)
    assert took < 5
    if mode == "whole":
        _timed_out(resp, "silence 0.5s")
    else:  # the status was sent: the stream ends with vLLM's error event and [DONE]
        assert resp.status_code == 200
        events = [ln[6:] for ln in resp.text.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == 504
    rd.hang_mid = None
    assert _post(s.url)[0].status_code == 200


def test_an_unstreamed_answer_may_take_longer_than_the_read_timeout(sim, sidecar, recorder) -> None:
    """Until its headers only the first-byte timeout counts: an unstreamed vLLM answer is
    silent for the whole generation, which must not read as a hung engine. The quick answer
    first leaves its connection pooled: a silence timer left armed on it would fail the slow
    one sent on it next."""
    d = sim("--zero-cost")
    rd = recorder(d.url)
    s = sidecar(rd.port, "--read-timeout", "0.3", "--first-byte-timeout", "30")
    assert _post(s.url)[0].status_code == 200
    rd.delay = 1.0
    for _ in range(2):
        resp, took = _post(s.url)
        assert resp.status_code == 200 and took >= 1.0


@pytest.fixture
def prefill(sim, sidecar, recorder):
    """client -> sidecar -> (prefill: recorder -> engine), (decode: recorder -> engine)."""

    def start(*args: str):
        p, d = sim("--zero-cost"), sim("--zero-cost")
        rp, rd = recorder(p.url), recorder(d.url)
        return rp, rd, sidecar(rd.port, *args)

    return start


@pytest.mark.parametrize(
    ("fault", "flag", "which"),
    [
        ("stall", "--prefill-first-byte-timeout", "first byte 0.5s"),
        ("hang_mid", "--prefill-read-timeout", "silence 0.5s"),
    ],
)
def test_a_hung_prefiller_is_a_504_once_retries_run_out(prefill, fault, flag, which) -> None:
    retry = ("--prefill-max-retries", "1", "--prefill-retry-backoff", "10ms")
    rp, rd, s = prefill(flag, "0.5", *retry)
    setattr(rp, fault, True if fault == "stall" else "whole")
    resp, took = _post(s.url, headers={HDR: rp.hostport, "x-request-id": "hung-p"})
    assert took < 5 and len(rp.seen) == 2 and not rd.seen  # one retry, no decode leg
    assert _timed_out(resp, which) == f"the prefill engine timed out ({which})"
    lines = log_events(s.proc.log_path, "prefiller_timed_out")
    assert [(ln["request_id"], ln["timeout"]) for ln in lines] == [("hung-p", which)] * 2
    setattr(rp, fault, False if fault == "stall" else None)
    ok, _ = _post(s.url, headers={HDR: rp.hostport})
    assert ok.status_code == 200 and "kv_transfer_params" in rd.seen[-1]  # P/D again


def test_a_hung_prefiller_without_retries_falls_back_after_its_timeout(prefill) -> None:
    rp, rd, s = prefill("--prefill-read-timeout", "0.5")
    rp.hang_mid = "whole"
    resp, took = _post(s.url, headers={HDR: rp.hostport})
    assert resp.status_code == 200 and took < 5
    assert "kv_transfer_params" not in rd.seen[-1]
    reason = "prefiller timed out"
    assert metric(s.url, "pdserve_sidecar_prefill_fallbacks_total", reason=reason) == 1


@contextlib.contextmanager
def _blackhole() -> Iterator[int]:
    """A port whose SYNs go unanswered: a listener that never accepts, its queue full, so a
    connect hangs as it does to a host that is gone."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            sock = socket.socket()
            sock.settimeout(0.3)
            fillers.append(sock)
            try:
                sock.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.fail("the listener's queue never filled")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def test_a_prefiller_that_never_accepts_is_a_504_after_the_connect_timeout(prefill) -> None:
    rp, rd, s = prefill("--prefill-connect-timeout", "0.5", "--prefill-max-retries", "1")
    with _blackhole() as port:
        resp, took = _post(s.url, headers={HDR: f"127.0.0.1:{port}"})
    assert took < 5 and not rd.seen
    _timed_out(resp, "connect 0.5s")
    assert _post(s.url, headers={HDR: rp.hostport})[0].status_code == 200


def test_a_body_over_the_limit_is_a_413_in_vllms_shape(sim, sidecar) -> None:
    d = sim("--zero-cost")
    s = sidecar(d.port, "--max-request-body-bytes", "1024")
    big = {"prompt": "x" * 2000, "max_tokens": 1}
    for path in ("/v1/completions", "/v1/embeddings"):  # the P/D path and the passthrough
        resp = httpx.post(s.url + path, json=big, timeout=30)
        assert vllm_error(resp, 413)["message"] == "request body over 1024 bytes"
    assert _post(s.url)[0].status_code == 200


async def _in_flight(url: str, n: int) -> None:
    """Wait (bounded) until the sidecar counts `n` requests in flight."""
    async with asyncio.timeout(10):
        while metric(url, "pdserve_sidecar_requests_in_flight") < n:
            await asyncio.sleep(0.02)  # polling the sidecar's gauge, bounded by the timeout


async def test_past_max_in_flight_each_request_is_a_429_at_once(sim, sidecar, recorder) -> None:
    """N slow requests fill the bound; k more are refused at once, with Retry-After, and the
    N complete. /health and /metrics still answer while the listener is full."""
    n, k = 3, 2
    d = sim("--zero-cost")
    rd = recorder(d.url)
    s = sidecar(rd.port, "--max-in-flight", str(n))
    rd.delay = 2.0
    async with httpx.AsyncClient(base_url=s.url, timeout=30) as http:
        slow = [asyncio.create_task(http.post("/v1/completions", json=BODY)) for _ in range(n)]
        await _in_flight(s.url, n)
        assert (await http.get("/health")).status_code == 200
        t0 = time.monotonic()
        refused = await asyncio.gather(
            *[
                http.post("/v1/completions", json=BODY, headers={"x-request-id": f"over-{i}"})
                for i in range(k)
            ]
        )
        assert time.monotonic() - t0 < 1.0  # at once, not after the slow ones
        done = await asyncio.gather(*slow)
    assert [r.status_code for r in done] == [200] * n
    for resp in refused:
        assert resp.headers["retry-after"] == "1"
        assert "too many requests in flight (3)" in vllm_error(resp, 429)["message"]
    assert metric(s.url, "pdserve_sidecar_requests_total", outcome="overloaded") == k
    assert metric(s.url, "pdserve_sidecar_requests_in_flight") == 0
    lines = log_events(s.proc.log_path, "request")
    over = sorted(ln["request_id"] for ln in lines if ln["outcome"] == "overloaded")
    assert over == [f"over-{i}" for i in range(k)]
    assert _post(s.url)[0].status_code == 200  # the bound frees as answers end
