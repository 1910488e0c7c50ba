"""llm-d-router v0.10's sidecar behaviours between real engines: prefill retries, the
cached-tokens usage, prefiller sampling, data-parallel ranks, chunked decode."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from pdserve.process import free_port, port_in_use
from testkit import metric

HDR = "x-prefiller-host-port"
DP_HDR = "x-data-parallel-host-port"
CHAT = "/v1/chat/completions"


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == status
    return body["error"]


def _events(resp: httpx.Response) -> list[str]:
    return [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]


def test_prefill_retries_then_upstreams_answer_when_they_run_out(sim, sidecar, recorder) -> None:
    """502/503/504 and no answer are retried with the backoff; once retries run out the
    client gets the failure (upstream does not fall back to decode-only); a 500 is not
    retried."""
    p, d = sim("--zero-cost"), sim("--zero-cost")
    rd = recorder(d.url)
    s = sidecar(rd.port, "--prefill-max-retries", "2", "--prefill-retry-backoff", "300ms")
    body = {"prompt": "retry " * 10, "max_tokens": 2}

    def post(target: str) -> httpx.Response:
        return httpx.post(s.url + "/v1/completions", json=body, headers={HDR: target}, timeout=30)

    flaky = recorder(p.url)
    flaky.fail_with, flaky.fail_times = 503, 2
    assert post(flaky.hostport).status_code == 200
    assert len(flaky.seen) == 3 and "kv_transfer_params" in rd.seen[-1]  # P/D after all

    down = recorder(p.url)
    down.fail_with = 503
    t0 = time.monotonic()
    resp = post(down.hostport)
    assert time.monotonic() - t0 >= 0.6  # two backoffs
    assert _error(resp, 503)["message"] == "boom"  # the prefiller's own error, passed on
    assert len(down.seen) == 3 and len(rd.seen) == 1  # no decode-only fallback

    broken = recorder(p.url)
    broken.fail_with = 500
    assert _error(post(broken.hostport), 500) and len(broken.seen) == 1

    message = _error(post(f"127.0.0.1:{free_port()}"), 502)["message"]
    assert message == "the prefill engine is unreachable"  # no internal address
    assert metric(s.url, "pdserve_sidecar_prefill_retries_total") == 2 + 2 + 2
    assert metric(s.url, "pdserve_sidecar_requests_total", outcome="prefill-failed") == 3
    assert len(rd.seen) == 1


def _cached(answer: dict) -> int:
    return answer["usage"]["prompt_tokens_details"]["cached_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_client_sees_the_prefillers_cache_hits(sim, sidecar, recorder, stream) -> None:
    """The decoder reports its own cache; after a handoff the client gets the prefiller's."""
    p, d = sim("--zero-cost"), sim("--zero-cost")
    rp, rd = recorder(p.url), recorder(d.url)
    s = sidecar(rd.port)
    body = {"model": "sim", "prompt": "cached prefix " * 40, "max_tokens": 3}
    for _ in range(2):  # decode-only, twice: the decoder has the prompt cached
        alone = httpx.post(s.url + "/v1/completions", json=body)
    assert _cached(alone.json()) > 0  # decode-only answers are the decoder's own
    streamed = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    seen, decoder = [], []
    for _ in range(2):  # the prefiller: cold, then warm
        resp = httpx.post(
            s.url + "/v1/completions", json={**body, **streamed}, headers={HDR: rp.hostport}
        )
        assert resp.status_code == 200
        if stream:
            seen.append(_cached(json.loads(_events(resp)[-2])))
            events = rd.streams[-1].decode().split("\n\n")
            decoder.append(_cached(json.loads(events[-3][6:])))
        else:
            seen.append(_cached(resp.json()))
            decoder.append(_cached(rd.answers[-1]))
    assert seen == [_cached(a) for a in rp.answers] and seen[0] == 0 and seen[1] > 0
    assert decoder[0] != seen[0]  # what the client would have seen without the rewrite


def test_prefiller_sampling_spreads_over_the_named_targets(sim, sidecar, recorder) -> None:
    p, d = sim("--zero-cost"), sim("--zero-cost")
    a, b = recorder(p.url), recorder(p.url)
    body = {"prompt": "x", "max_tokens": 1}
    first = sidecar(d.port)
    for value in (f"{a.hostport}, {b.hostport}",):
        assert httpx.post(first.url + "/v1/completions", json=body, headers={HDR: value})
    repeated = [(HDR, a.hostport), (HDR, b.hostport)]  # two header values
    assert httpx.post(first.url + "/v1/completions", json=body, headers=repeated)
    assert len(a.seen) == 2 and not b.seen  # without sampling: always the first
    sampled = sidecar(d.port, "--enable-prefiller-sampling")
    for _ in range(20):
        resp = httpx.post(
            sampled.url + "/v1/completions", json=body, headers={HDR: f"{a.hostport},{b.hostport}"}
        )
        assert resp.status_code == 200
    assert len(a.seen) > 2 and b.seen and len(a.seen) + len(b.seen) == 22


def _consecutive_free_ports(n: int) -> int:
    for _ in range(100):
        base = free_port()
        if base + n <= 65535 and not any(port_in_use(base + i) for i in range(1, n)):
            return base
    raise AssertionError("no run of free ports")


def test_data_parallel_ranks_and_the_rank_header(sim, sidecar) -> None:
    engine = _consecutive_free_ports(2)
    ranks = [sim("--zero-cost", port=engine), sim("--zero-cost", port=engine + 1)]
    prefill = sim("--zero-cost")
    port = _consecutive_free_ports(2)
    s = sidecar(
        free_port(),  # the deprecated --vllm-port the fixture passes: --model-server-port wins
        "--model-server-port",
        str(engine),
        "--data-parallel-size",
        "2",
        port=port,
        env={"POD_IP": "127.0.0.1"},
    )
    rank1 = f"http://127.0.0.1:{port + 1}"
    httpx.get(rank1 + "/health").raise_for_status()  # rank 1's own listener, its own engine
    body = {"prompt": "dp " * 8, "max_tokens": 2}

    def served() -> list[float]:
        return [metric(r.url, "vllm:request_success_total") for r in ranks]

    assert httpx.post(s.url + "/v1/completions", json=body).status_code == 200
    assert served() == [1, 0]
    routed = {DP_HDR: f"127.0.0.1:{port + 1}"}
    assert httpx.post(s.url + "/v1/completions", json=body, headers=routed).status_code == 200
    pd = {**routed, HDR: f"127.0.0.1:{prefill.port}"}
    assert (
        httpx.post(
            s.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers=pd,
        ).status_code
        == 200
    )
    assert httpx.post(rank1 + "/v1/completions", json=body).status_code == 200
    assert served() == [1, 3]
    assert metric(ranks[1].url, "pdserve_sim:kv_pulls_total", outcome="ok") == 1
    for wrong in (f"127.0.0.1:{port + 2}", f"10.1.1.1:{port + 1}", "nonsense"):
        resp = httpx.post(s.url + "/v1/completions", json=body, headers={DP_HDR: wrong})
        assert DP_HDR in _error(resp, 400)["message"]
    assert served() == [1, 3]


def test_chunked_decode_from_the_configuration(sim, sidecar, recorder) -> None:
    p, d = sim("--zero-cost"), sim("--zero-cost")
    rd = recorder(d.url)
    s = sidecar(rd.port, "--configuration", "{decode-chunk-size: 4}")
    body = {
        "model": "sim",
        "messages": [{"role": "user", "content": "Tell a long story"}],
        "max_tokens": 10,
        "ignore_eos": True,
    }
    whole = httpx.post(s.url + CHAT, json=body, headers={HDR: f"127.0.0.1:{p.port}"}, timeout=30)
    assert whole.status_code == 200, whole.text
    assert [leg["max_tokens"] for leg in rd.seen] == [4, 4, 2]
    assert "kv_transfer_params" in rd.seen[0] and "kv_transfer_params" not in rd.seen[1]
    assert all(leg["continue_final_message"] for leg in rd.seen[1:])
    answer = whole.json()
    texts = [a["choices"][0]["message"]["content"] for a in rd.answers]
    assert answer["choices"][0]["message"]["content"] == "".join(texts)
    prompt = rd.answers[0]["usage"]["prompt_tokens"]
    assert answer["usage"]["completion_tokens"] == 10
    assert answer["usage"]["total_tokens"] == prompt + 10
    assert "prompt_tokens_details" in answer["usage"]  # the P/D cached-tokens rewrite

    rd.seen.clear()
    streamed = httpx.post(s.url + CHAT, json={**body, "stream": True}, timeout=30)
    events = _events(streamed)
    assert len(rd.seen) == 3 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 10
    deltas = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-2]]
    assert len(deltas) == 3 and all(deltas)

    rd.seen.clear()
    short = httpx.post(s.url + CHAT, json={**body, "max_tokens": 3, "stream": True})
    assert len(rd.seen) == 1 and rd.seen[0]["stream"] is True  # fits one chunk: as sent
    assert _events(short)[-1] == "[DONE]"
    completions = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 9})
    assert completions.status_code == 200 and rd.seen[-1]["max_tokens"] == 9  # chat only
    rd.fail_with, rd.fail_times = 503, len(rd.seen) + 1  # the next chunk fails
    failed = httpx.post(s.url + CHAT, json={**body, "stream": True}, timeout=30)
    assert _error(failed, 503)["message"] == "boom"  # the stream had not started: its status
