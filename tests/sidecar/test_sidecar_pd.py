"""The sidecar between two sim engines: the P/D path, failures, SSRF and TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import httpx
import openai
import pytest

from pdserve import endpoints, wire
from pdserve.endpoints import Entry
from pdserve.process import free_port
from pdserve.tls import self_signed
from testkit import PDSERVE, metric, metric_in, reset_after_first_event
from testkit import vllm_error as _error

ROLE = wire.ROLE_LABEL

HDR = "x-prefiller-host-port"


@pytest.fixture
def pd(sim, sidecar, recorder):
    """prefill engine <- recorder;  client -> sidecar -> recorder -> decode engine."""
    p, d = sim("--zero-cost"), sim("--zero-cost")
    rp, rd = recorder(p.url), recorder(d.url)
    s = sidecar(rd.port)
    return p, d, rp, rd, s


def test_an_unfit_request_id_is_replaced_on_both_legs(pd) -> None:
    """Failing open, Envoy hands the sidecar the client's id as is: one a log line or header
    cannot carry whole is replaced, the same fresh id on the prefill and decode legs; a fit
    one travels unchanged."""
    _, _, rp, rd, s = pd
    body = {"model": "sim", "prompt": "Explain prefill " * 30, "max_tokens": 2}
    for client, kept in (("two words", False), ("x" * 129, False), ("fit-id-1", True)):
        resp = httpx.post(
            s.url + "/v1/completions",
            json=body,
            headers={HDR: rp.hostport, "x-request-id": client},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        prefill, decode = rp.headers[-1]["x-request-id"], rd.headers[-1]["x-request-id"]
        assert prefill == decode and (prefill == client) is kept
        if not kept:
            assert str(uuid.UUID(prefill)) == prefill


def _text(resp: dict) -> str:
    choice = resp["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def _sse_text(lines: list[str]) -> str:
    out = ""
    for line in lines:
        if line.startswith("data: {"):
            choice = (json.loads(line[6:])["choices"] or [{}])[0]
            out += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return out


@pytest.mark.parametrize("chat", [False, True])
def test_pd_whole_and_streamed_equal_aggregated(pd, chat) -> None:
    _, d, rp, rd, s = pd
    path = "/v1/chat/completions" if chat else "/v1/completions"
    base = (
        {"messages": [{"role": "user", "content": "Explain prefill " * 30}]}
        if chat
        else {"prompt": "Explain prefill " * 30}
    )
    body = {"model": "sim", **base, "max_tokens": 10}
    aggregated = _text(httpx.post(d.url + path, json=body).json())

    whole = httpx.post(s.url + path, json=body, headers={HDR: rp.hostport}, timeout=30)
    assert whole.status_code == 200 and _text(whole.json()) == aggregated
    leg = rp.seen[-1]
    assert leg["kv_transfer_params"]["do_remote_decode"] is True
    assert leg["max_tokens"] == 1 and leg["max_completion_tokens"] == 1 and leg["stream"] is False
    assert rd.seen[-1]["kv_transfer_params"] == rp.answers[-1]["kv_transfer_params"]
    assert rd.seen[-1]["max_tokens"] == 10 and "max_completion_tokens" not in rd.seen[-1]
    assert rp.headers[-1]["x-request-id"] == rd.headers[-1]["x-request-id"]

    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST", s.url + path, json=streamed, headers={HDR: rp.hostport}, timeout=30
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert _sse_text(lines) == aggregated and lines[-1] == "data: [DONE]"
    assert "stream_options" not in rp.seen[-1] and rp.seen[-1]["stream"] is False
    assert rd.seen[-1]["stream"] is True
    assert rd.seen[-1]["stream_options"] == {"include_usage": True}
    assert metric(s.url, "pdserve_sidecar_requests_total", outcome="pd") == 2
    assert metric(d.url, "pdserve_sim:kv_pulls_total", outcome="ok") == 2


def test_without_header_decode_only_and_other_paths_proxied(pd) -> None:
    _, _, rp, rd, s = pd
    resp = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert resp.status_code == 200 and not rp.seen
    assert "kv_transfer_params" not in rd.seen[-1]
    assert httpx.get(s.url + "/v1/models").json()["data"][0]["id"] == "sim"
    assert metric(s.url, "pdserve_sidecar_requests_total", outcome="decode-only") == 1


def test_openai_client_through_sidecar(pd) -> None:
    _, _, rp, _, s = pd
    client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", default_headers={HDR: rp.hostport})
    out = client.chat.completions.create(
        model="sim", max_tokens=5, messages=[{"role": "user", "content": "hello"}]
    )
    assert out.usage.completion_tokens == 5 and rp.seen
    chunks = list(client.completions.create(model="sim", prompt="hi", max_tokens=4, stream=True))
    assert sum(bool(c.choices and c.choices[0].text) for c in chunks) == 4


def test_prefiller_4xx_is_returned_with_its_body(pd) -> None:
    _, _, rp, rd, s = pd
    resp = httpx.post(
        s.url + "/v1/completions", json={"model": "nope", "prompt": "x"}, headers={HDR: rp.hostport}
    )
    assert "does not exist" in _error(resp, 404)["message"]
    assert not rd.seen  # nothing was sent to the decoder


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("failure", ["5xx", "refused", "timeout"])
def test_prefill_failures_fall_back_to_decode_only(sim, sidecar, recorder, failure) -> None:
    p, d = sim("--zero-cost"), sim("--zero-cost")
    rp, rd = recorder(p.url), recorder(d.url)
    s = sidecar(rd.port, "--prefill-timeout", "0.5")
    target = rp.hostport
    if failure == "5xx":
        rp.fail_with = 500
    elif failure == "refused":
        target = f"127.0.0.1:{free_port()}"
    else:
        rp.stall = True
    body = {"prompt": "fallback " * 20, "max_tokens": 3}
    resp = httpx.post(s.url + "/v1/completions", json=body, headers={HDR: target}, timeout=30)
    assert resp.status_code == 200
    assert _text(resp.json()) == _text(httpx.post(d.url + "/v1/completions", json=body).json())
    assert "kv_transfer_params" not in rd.seen[-1]
    assert metric(s.url, "pdserve_sidecar_requests_total", outcome="fallback") == 1
    reason = {"5xx": "prefiller answered 500", "refused": "prefiller unreachable"}
    fallbacks = "pdserve_sidecar_prefill_fallbacks_total"
    assert metric(s.url, fallbacks, reason=reason.get(failure, "prefiller timed out")) == 1


@pytest.mark.no_stranded_kv
def test_bad_json_is_400_and_dead_decoder_is_502(sidecar, recorder, sim) -> None:
    p = sim("--zero-cost")
    s = sidecar(free_port(), engine=False)  # nothing listens on the engine port
    bad = httpx.post(s.url + "/v1/completions", content=b"{oops", headers={HDR: "127.0.0.1:1"})
    assert "invalid JSON" in _error(bad, 400)["message"]
    deep = httpx.post(
        s.url + "/v1/completions", content=b"[" * 100_000, headers={HDR: "127.0.0.1:1"}
    )
    assert "nested too deeply" in _error(deep, 400)["message"]
    dead = httpx.post(s.url + "/v1/completions", json={"prompt": "x"})
    error = _error(dead, 502)
    assert error["message"] == "the decode engine is unreachable"  # no internal address
    rp = recorder(p.url)
    pd = httpx.post(s.url + "/v1/completions", json={"prompt": "x"}, headers={HDR: rp.hostport})
    assert _error(pd, 502) and len(rp.seen) == 1  # prefill ran, the decoder is down
    # The sidecar keeps serving, and says its engine is down.
    assert "not healthy" in _error(httpx.get(s.url + "/health"), 503)["message"]


def _await_abort(engine_url: str) -> None:
    deadline = time.monotonic() + 10
    while not metric(engine_url, "vllm:request_success_total", finished_reason="abort"):
        assert time.monotonic() < deadline, f"{engine_url} never saw the request aborted"
        time.sleep(0.05)  # polling the engine's metrics, bounded by the deadline
    assert metric(engine_url, "vllm:num_requests_running") == 0


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("path", ["decode-only", "pd"])
def test_client_disconnect_cancels_the_decode(sim, sidecar, path) -> None:
    d = sim()  # real timing: 300 tokens take seconds
    headers = {}
    if path == "pd":
        headers[HDR] = f"127.0.0.1:{sim('--zero-cost').port}"
    s = sidecar(d.port)
    body = {"prompt": "long", "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.stream(
        "POST", s.url + "/v1/completions", json=body, headers=headers, timeout=30
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first token
    _await_abort(d.url)


@pytest.mark.no_stranded_kv
def test_client_disconnect_during_prefill_cancels_it(sim, sidecar, tmp_path) -> None:
    slow = tmp_path / "slow-prefill.yaml"
    # Chunked prefill, 32 tokens a step at 20 ms a token: a 500-word prompt prefills for
    # ~10 s in steps of 0.64 s, so the abort lands between two chunks.
    slow.write_text("prefill_ms_per_token: 20.0\nmax_num_batched_tokens: 32\n")
    p, d = sim("--profile", str(slow)), sim("--zero-cost")
    s = sidecar(d.port)
    body = {"prompt": "word " * 500, "max_tokens": 8}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            s.url + "/v1/completions", json=body, headers={HDR: f"127.0.0.1:{p.port}"}, timeout=1
        )
    _await_abort(p.url)  # the prefill leg was cancelled, not left to run
    assert metric(d.url, "vllm:request_success_total") == 0  # and no decode leg started


def test_ssrf_protection(sim, sidecar, recorder) -> None:
    p, d = sim("--zero-cost"), sim("--zero-cost")
    rp, other = recorder(p.url), recorder(p.url)  # same host, two ports
    body = {"prompt": "x", "max_tokens": 2}
    denied = sidecar(d.port, "--enable-ssrf-protection", "--allowed-prefill-hosts", "10.9.9.9:80")
    resp = httpx.post(denied.url + "/v1/completions", json=body, headers={HDR: rp.hostport})
    assert resp.status_code == 403 and not rp.seen
    allowed = sidecar(
        d.port,
        "--enable-ssrf-protection=true",
        f"--allowed-prefill-hosts=10.9.9.9:80,{rp.hostport}",
    )
    resp = httpx.post(allowed.url + "/v1/completions", json=body, headers={HDR: rp.hostport})
    assert resp.status_code == 200 and len(rp.seen) == 1
    # The allowed host on a port not in the list: refused before anything is sent there.
    resp = httpx.post(allowed.url + "/v1/completions", json=body, headers={HDR: other.hostport})
    assert _error(resp, 403)["code"] == 403 and not other.seen


def test_ssrf_protection_follows_the_runners_endpoints_file(
    sim, sidecar, recorder, tmp_path
) -> None:
    """The runner's way: prefill engines' ports are known only once they start, and scaling
    changes them; the sidecar allows the prefill entries of the file the runner rewrites."""
    p, d = sim("--zero-cost"), sim("--zero-cost")
    first, second = recorder(p.url), recorder(p.url)
    file = tmp_path / "endpoints.json"

    def publish(*prefills: int) -> None:
        entries = [Entry(address="127.0.0.1", port=d.port, labels={ROLE: wire.ROLE_DECODE})]
        entries += [
            Entry(address="127.0.0.1", port=n, labels={ROLE: wire.ROLE_PREFILL}) for n in prefills
        ]
        endpoints.write(file, entries)

    publish(first.port)
    s = sidecar(d.port, "--enable-ssrf-protection", "--allowed-prefill-endpoints-file", str(file))
    body = {"prompt": "x", "max_tokens": 2}

    def status(target: str) -> int:
        return httpx.post(s.url + "/v1/completions", json=body, headers={HDR: target}).status_code

    assert status(first.hostport) == 200 and status(second.hostport) == 403
    assert status(f"127.0.0.1:{d.port}") == 403  # a decode endpoint is no prefill target
    publish(first.port, second.port)  # scaled up
    assert status(second.hostport) == 200
    publish(second.port)  # scaled down
    assert status(first.hostport) == 403 and len(first.seen) == 1 and len(second.seen) == 1


def test_a_bare_host_in_the_static_allow_list_is_refused_at_start() -> None:
    """A host alone would allow every port of it (upstream's host-only list, llm-d-router
    issue 979): one line naming the entry, exit 2."""
    argv = [*PDSERVE, "sidecar", "--port", "0", "--enable-ssrf-protection"]
    proc = subprocess.run(
        [*argv, "--allowed-prefill-hosts", "127.0.0.1"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--allowed-prefill-hosts: expected host:port, got '127.0.0.1'" in proc.stderr


@pytest.mark.parametrize(
    "value",
    [
        "10.9.9.9:8000@{evil}",  # allowed host as the user part, the request would go to evil
        "http://{evil}",
        "{evil}/path",
        "10.9.9.9",  # no port
    ],
)
def test_a_prefill_target_other_than_host_port_is_400_and_nothing_is_sent(
    sim, sidecar, recorder, value
) -> None:
    evil = recorder(sim("--zero-cost").url)
    s = sidecar(
        free_port(),
        "--enable-ssrf-protection",
        "--allowed-prefill-hosts",
        "10.9.9.9:80",
        engine=False,
    )
    body = {"prompt": "x", "max_tokens": 2}
    header = value.format(evil=evil.hostport)
    resp = httpx.post(s.url + "/v1/completions", json=body, headers={HDR: header})
    assert HDR in _error(resp, 400)["message"] and not evil.seen
    assert _error(httpx.get(s.url + "/health"), 503)  # still serving (no engine behind it)


def test_both_legs_send_one_json_content_type_whatever_the_client_declared(pd) -> None:
    _, _, rp, rd, s = pd
    resp = httpx.post(
        s.url + "/v1/completions",
        content=json.dumps({"prompt": "x", "max_tokens": 2}),
        headers={HDR: rp.hostport, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status_code == 200
    assert rp.content_types == [["application/json"]]
    assert rd.content_types == [["application/json"]]


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("mode", ["whole", "sse"])
def test_a_decoder_dying_mid_answer_gives_a_vllm_shaped_error(sim, sidecar, recorder, mode):
    p = sim("--zero-cost")
    rp, rd = recorder(p.url), recorder(p.url)
    rd.break_off = mode
    s = sidecar(rd.port)
    body = {"prompt": "x", "max_tokens": 2, "stream": mode == "sse"}
    resp = httpx.post(s.url + "/v1/completions", json=body, headers={HDR: rp.hostport})
    if mode == "whole":
        message = _error(resp, 502)["message"]
        assert "broke off" in message and "127.0.0.1" not in message
    else:  # the 200 is already sent: the stream ends with an error event and [DONE]
        events = [line for line in resp.text.splitlines() if line.startswith("data: ")]
        error = json.loads(events[-2][6:])
        assert set(error) == {"error"} and error["error"]["code"] == 502
        assert events[-1] == "data: [DONE]"
    assert httpx.get(s.url + "/health").status_code == 200


def test_a_prefill_answer_that_is_not_an_object_falls_back_to_decode_only(pd) -> None:
    _, _, rp, rd, s = pd
    rp.answer_with = [1, 2]
    resp = httpx.post(
        s.url + "/v1/completions",
        json={"prompt": "x", "max_tokens": 2},
        headers={HDR: rp.hostport},
    )
    assert resp.status_code == 200
    assert "kv_transfer_params" not in rd.seen[0]
    reason = "prefiller answered JSON that is not an object"
    assert metric(s.url, "pdserve_sidecar_prefill_fallbacks_total", reason=reason) == 1


def test_tls_on_both_legs_with_self_signed_certs(sim, sidecar, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    p, d = sim("--zero-cost", *tls), sim("--zero-cost", *tls)
    s = sidecar(
        d.port,
        "--prefiller-use-tls",
        "--prefiller-tls-insecure-skip-verify=true",
        "--decoder-use-tls=true",
        "--decoder-tls-insecure-skip-verify",
        tls=True,
    )
    body = {"prompt": "secure " * 20, "max_tokens": 4}
    resp = httpx.post(
        s.url + "/v1/completions",
        json=body,
        verify=False,
        headers={HDR: f"127.0.0.1:{p.port}"},
        timeout=30,
    )
    assert resp.status_code == 200
    with httpx.Client(verify=False) as c:
        text = c.get(f"{s.url}/metrics").text
    assert 'pdserve_sidecar_requests_total{outcome="pd",path="/v1/completions"} 1.0' in text


def test_what_the_decoder_would_refuse_is_refused_before_any_prefill(sim, sidecar) -> None:
    """max_tokens beyond the context, or a sampling field vLLM refuses: a vLLM-shaped 400
    from the sidecar, and the prefill engine never sees the request."""
    p, d = (
        sim("--zero-cost", "--max-model-len", "256"),
        sim("--zero-cost", "--max-model-len", "256"),
    )
    s = sidecar(d.port)
    target = {HDR: f"127.0.0.1:{p.port}"}
    body = {"model": "sim", "prompt": "Explain prefill " * 30}
    refused = [
        (json.dumps({**body, "max_tokens": 257}).encode(), "max_tokens"),
        (json.dumps(body).encode()[:-1] + b', "temperature": NaN}', "temperature"),
        (json.dumps({**body, "top_p": 1.5}).encode(), "top_p"),
        (json.dumps({**body, "stream": "maybe"}).encode(), "stream"),
        (json.dumps({**body, "n": 1.5}).encode(), "n"),
    ]
    for i, (raw, param) in enumerate(refused):
        headers = {**target, "content-type": "application/json", "x-request-id": f"refused-{i}"}
        resp = httpx.post(s.url + "/v1/completions", content=raw, headers=headers)
        assert _error(resp, 400)["param"] == param
    assert (
        "max_model_len=256"
        in _error(
            httpx.post(s.url + "/v1/completions", json={**body, "max_tokens": 257}, headers=target),
            400,
        )["message"]
    )
    assert metric(p.url, "vllm:request_success_total") == 0
    assert metric(p.url, "vllm:prompt_tokens_total") == 0
    assert metric(s.url, "pdserve_sidecar_requests_total", outcome="rejected") == 6
    lines = [json.loads(ln) for ln in s.proc.log_path.read_text().splitlines() if ln[:1] == "{"]
    logged = {e["request_id"]: e for e in lines if e["event"] == "request"}
    for i, (_, param) in enumerate(refused):
        line = logged[f"refused-{i}"]
        assert line["level"] == "warning" and line["outcome"] == "rejected"
        assert line["status"] == 400 and line["param"] == param
    ok = httpx.post(s.url + "/v1/completions", json={**body, "max_tokens": 4}, headers=target)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
    assert metric(p.url, "vllm:request_success_total") == 1  # within the context: P/D
    assert metric(s.url, "pdserve_sidecar_requests_total", outcome="pd") == 1


async def test_a_client_gone_between_two_writes_is_one_info_line(sim, caplog) -> None:
    """A write can find the client gone before aiohttp's handler cancellation lands (here it
    never does: the app runs without it): one info line, the engine's request aborted (the
    sidecar drops its connection), no traceback."""
    import asyncio
    import logging

    from aiohttp import web

    from pdserve.sidecar.proxy import Options, Sidecar

    caplog.set_level(logging.INFO)
    d = sim()  # real timing: 300 tokens take seconds
    runner = web.AppRunner(Sidecar(Options(vllm_port=d.port)).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        await reset_after_first_event(port, "sidecar", "gone-2")
        async with asyncio.timeout(10), httpx.AsyncClient() as http:
            while True:  # polling the engine's metrics for the abort
                text = (await http.get(f"{d.url}/metrics")).text
                if metric_in(text, "vllm:request_success_total", finished_reason="abort") == 1:
                    break
                await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    gone = [r for r in caplog.records if r.getMessage() == "client_disconnected"]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO
    assert gone[0].fields == {
        "request_id": "gone-2",
        "path": "/v1/completions",
        "phase": "decode-only",
    }
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_health_and_metrics_follow_the_local_engine(sim, sidecar) -> None:
    """With its engine gone the sidecar's /health and /metrics are 503s, so neither a
    readiness probe nor the EPP's scrape counts this decode endpoint ready."""
    d = sim("--zero-cost")
    s = sidecar(d.port)
    assert httpx.get(s.url + "/metrics").status_code == 200
    d.proc.stop(timeout=5)
    assert "not healthy" in _error(httpx.get(s.url + "/health"), 503)["message"]
    assert "metrics unavailable" in _error(httpx.get(s.url + "/metrics"), 503)["message"]


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("stream", [False, True])
def test_a_hung_decoder_costs_a_504_not_a_hang(sim, sidecar, stream) -> None:
    """SIGSTOP: the engine accepts connections (the kernel does) and never answers."""
    d = sim("--zero-cost")
    s = sidecar(d.port, "--read-timeout", "1")
    assert d.proc.pid is not None
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        body = {"prompt": "x", "max_tokens": 2, "stream": stream}
        resp = httpx.post(s.url + "/v1/completions", json=body, timeout=30)
        assert time.monotonic() - t0 < 10
        message = _error(resp, 504)["message"]
        assert "timed out" in message and "127.0.0.1" not in message
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
