"""P/D between two sim engines behaves like vLLM's NixlConnector, bytes and failures included."""

from __future__ import annotations

import json
import random
import re
import signal
from pathlib import Path

import httpx
import pytest

from pdserve.wire import prefill_kv_transfer_params
from testkit import metric


def prefill(url: str, body: dict) -> dict:
    leg = {
        **body,
        "kv_transfer_params": prefill_kv_transfer_params(),
        "max_tokens": 1,
        "stream": False,
    }
    resp = httpx.post(f"{url}/v1/completions", json=leg, timeout=30)
    resp.raise_for_status()
    return resp.json()["kv_transfer_params"]


def decode(url: str, body: dict, kv: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json={**body, "kv_transfer_params": kv}, timeout=60)


def _prompts(n: int) -> list[str]:
    rng = random.Random(7)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "cache",
        "block",
        "token",
        "prefill",
        "decode",
        "route",
        "pod",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 400))) for _ in range(n)]


@pytest.mark.parametrize("transport", ["nixl", "tcp"])
def test_pd_output_equals_aggregated_for_50_prompts(sim_engine, transport) -> None:
    kv = json.dumps(
        {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"transport": transport},
        }
    )
    p, d, agg = (sim_engine("--zero-cost", kv=kv) for _ in range(3))
    with httpx.Client(timeout=60) as http:
        for prompt in _prompts(50):
            body = {"model": "sim", "prompt": prompt, "max_tokens": 12}
            params = prefill(p.url, body)
            assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
            assert params["remote_num_tokens"] > 0 and params["remote_block_ids"]
            assert {
                "remote_engine_id",
                "remote_request_id",
                "remote_host",
                "remote_port",
                "tp_size",
            } <= set(params)
            split = decode(d.url, body, params).json()["choices"][0]["text"]
            whole = http.post(f"{agg.url}/v1/completions", json=body).json()["choices"][0]["text"]
            assert split == whole
    assert metric(d.url, "pdserve_sim:kv_pulls_total", transport=transport, outcome="ok") == 50
    assert metric(d.url, "pdserve_sim:kv_pull_bytes_total") > 0
    # The consumer released every lease: the producer holds nothing.
    assert metric(p.url, "pdserve_sim:kv_leases") == 0
    assert metric(p.url, "vllm:kv_cache_usage_perc") == 0


def test_decode_skips_prefill_work(sim_engine) -> None:
    p, d = sim_engine("--zero-cost"), sim_engine("--zero-cost")
    body = {"prompt": "word " * 300, "max_tokens": 3}
    resp = decode(d.url, body, prefill(p.url, body))
    resp.raise_for_status()
    # Only the last prompt token is computed locally; the rest arrived over the wire.
    assert metric(d.url, "pdserve_sim:prefill_tokens_computed_total") == 1
    # vLLM's counter still counts the whole prompt, cached or pulled or not.
    assert metric(d.url, "vllm:prompt_tokens_total") == resp.json()["usage"]["prompt_tokens"]


def test_lease_expires_when_no_consumer_comes(sim_engine) -> None:
    p = sim_engine("--zero-cost", env={"VLLM_NIXL_ABORT_REQUEST_TIMEOUT": "1"})
    prefill(p.url, {"prompt": "held " * 100})
    assert metric(p.url, "pdserve_sim:kv_leases") == 1
    assert metric(p.url, "vllm:kv_cache_usage_perc") > 0
    p.proc.wait_http(f"{p.url}/health", timeout=1)
    import time

    deadline = time.monotonic() + 10
    while metric(p.url, "pdserve_sim:kv_leases") and time.monotonic() < deadline:
        time.sleep(0.1)  # polling an observable, not waiting for readiness
    assert metric(p.url, "pdserve_sim:kv_leases") == 0
    assert metric(p.url, "vllm:kv_cache_usage_perc") == 0


def _kv(policy: str, **extra: str) -> str:
    return json.dumps(
        {
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
            "kv_load_failure_policy": policy,
            "kv_connector_extra_config": extra,
        }
    )


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("transport", ["nixl", "tcp"])
def test_checksum_mismatch_recomputes(sim_engine, transport) -> None:
    p = sim_engine("--zero-cost", kv=_kv("recompute", fault="corrupt", transport=transport))
    d = sim_engine("--zero-cost", kv=_kv("recompute", transport=transport))
    agg = sim_engine("--zero-cost", kv=None)
    body = {"prompt": "checksum " * 80, "max_tokens": 5}
    resp = decode(d.url, body, prefill(p.url, body))
    assert resp.status_code == 200
    whole = httpx.post(f"{agg.url}/v1/completions", json=body).json()["choices"][0]["text"]
    assert resp.json()["choices"][0]["text"] == whole
    assert metric(d.url, "pdserve_sim:kv_pulls_total", outcome="failed") == 1
    assert "checksum mismatch" in d.proc.log_path.read_text()
    recomputed = metric(d.url, "pdserve_sim:prefill_tokens_computed_total")
    assert recomputed == resp.json()["usage"]["prompt_tokens"]  # the whole prompt, locally


@pytest.mark.no_stranded_kv
def test_checksum_mismatch_fails_request_with_policy_fail(sim_engine) -> None:
    p = sim_engine("--zero-cost", kv=_kv("fail", fault="corrupt"))
    d = sim_engine("--zero-cost", kv=_kv("fail"))
    body = {"prompt": "checksum " * 80, "max_tokens": 5}
    resp = decode(d.url, body, prefill(p.url, body))
    assert resp.status_code == 500 and resp.json()["error"]["code"] == 500
    assert httpx.post(f"{d.url}/v1/completions", json=body).status_code == 200


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_killed_prefiller_is_handled_per_policy(sim_engine, policy) -> None:
    p = sim_engine("--zero-cost", kv=_kv(policy))
    d = sim_engine("--zero-cost", kv=_kv(policy))
    body = {"prompt": "lost " * 50, "max_tokens": 4}
    params = prefill(p.url, body)
    p.proc.popen.send_signal(signal.SIGKILL)
    p.proc.popen.wait(10)
    resp = decode(d.url, body, params)
    assert resp.status_code == (200 if policy == "recompute" else 500)
    assert re.search(r'"kv_pull".*"ok":false', d.proc.log_path.read_text())


def test_stalled_pull_times_out_and_recomputes(sim_engine) -> None:
    p = sim_engine("--zero-cost", kv=_kv("recompute", fault="stall"))
    d = sim_engine("--zero-cost", kv=_kv("recompute", pull_timeout="0.5"))
    body = {"prompt": "slow " * 50, "max_tokens": 4}
    resp = decode(d.url, body, prefill(p.url, body))
    assert resp.status_code == 200
    assert "timed out" in d.proc.log_path.read_text()


def unleased_params(**over: object) -> dict:
    """Consumer params for request cmpl-x, which no engine leased; port 1: nothing listens."""
    return {
        "do_remote_prefill": True,
        "remote_engine_id": "nope",
        "remote_block_ids": [1, 2],
        "remote_request_id": "cmpl-x",
        "remote_host": "127.0.0.1",
        "remote_port": 1,
        **over,
    }


@pytest.mark.parametrize("policy", ["recompute", "fail"])
@pytest.mark.parametrize("target", ["dead", "live"])
def test_params_naming_a_dead_or_unknown_engine(sim_engine, target, policy) -> None:
    d = sim_engine("--zero-cost", kv=_kv(policy))
    port = 1  # nothing listens there
    if target == "live":  # a real engine's side channel, which never leased request cmpl-x
        live = sim_engine("--zero-cost", kv=_kv(policy))
        port = prefill(live.url, {"prompt": "other " * 40, "max_tokens": 2})["remote_port"]
    body = {"prompt": "who " * 40, "max_tokens": 2}
    resp = decode(d.url, body, unleased_params(remote_port=port))
    if policy == "recompute":
        assert resp.status_code == 200
        local = httpx.post(f"{d.url}/v1/completions", json=body).json()
        assert resp.json()["choices"][0]["text"] == local["choices"][0]["text"]
    else:
        assert resp.status_code == 500
        error = resp.json()["error"]
        assert error["code"] == 500 and error["type"] == "InternalServerError"
        assert "kv_load_failure_policy" in error["message"]
    assert metric(d.url, "pdserve_sim:kv_pulls_total", outcome="failed") == 1
    assert httpx.post(f"{d.url}/v1/completions", json=body).status_code == 200  # still serving


@pytest.mark.parametrize(
    "bad",
    [
        {"remote_block_ids": 5},
        {"remote_block_ids": ["a"]},
        {"remote_num_tokens": "x"},
        {"remote_port": "http"},
    ],
)
@pytest.mark.no_stranded_kv
def test_malformed_consumer_params_are_a_400_not_a_request_stuck_waiting(sim_engine, bad):
    d = sim_engine("--zero-cost", kv=_kv("recompute"))
    body = {"prompt": "who " * 40, "max_tokens": 2}
    resp = decode(d.url, body, unleased_params(**bad))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == 400 and "kv_transfer_params" in error["message"]
    assert metric(d.url, "vllm:num_requests_waiting") == 0
    assert httpx.post(f"{d.url}/v1/completions", json=body).status_code == 200  # still serving


def test_consumer_with_prompt_cached_skips_pull_and_frees_producer_lease(sim_engine) -> None:
    p, d = sim_engine("--zero-cost"), sim_engine("--zero-cost")
    # 8 full blocks of 16 plus one token: once cached, only the last token is left to compute.
    body = {"prompt": list(range(5000, 5129)), "max_tokens": 3}
    local = httpx.post(f"{d.url}/v1/completions", json=body).json()  # warms d's prefix cache
    params = prefill(p.url, body)
    assert metric(p.url, "pdserve_sim:kv_leases") == 1
    resp = decode(d.url, body, params).json()
    assert resp["choices"][0]["text"] == local["choices"][0]["text"]
    assert metric(d.url, "pdserve_sim:kv_pulls_total") == 0
    assert "kv_pull_skipped" in d.proc.log_path.read_text()
    assert metric(p.url, "pdserve_sim:kv_leases") == 0  # released without a pull
    assert metric(p.url, "vllm:kv_cache_usage_perc") == 0


@pytest.mark.no_stranded_kv
@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_prefiller_killed_mid_pull_is_handled_per_policy(sim_engine, policy) -> None:
    import threading
    import time

    p = sim_engine("--zero-cost", kv=_kv(policy, fault="stall"))
    d = sim_engine("--zero-cost", kv=_kv(policy, pull_timeout="60"))
    body = {"prompt": "midway " * 50, "max_tokens": 4}
    params = prefill(p.url, body)
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: result.update(r=decode(d.url, body, params)))
    worker.start()
    deadline = time.monotonic() + 30
    while metric(d.url, "vllm:num_requests_waiting") == 0:  # the pull is under way
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.proc.popen.send_signal(signal.SIGKILL)
    worker.join(30)
    log = d.proc.log_path.read_text()
    assert re.search(r'"kv_pull".*"ok":false', log) and "timed out" not in log
    agg = httpx.post(f"{d.url}/v1/completions", json=body)
    assert agg.status_code == 200  # the consumer keeps serving
    if policy == "recompute":
        assert result["r"].status_code == 200
        assert result["r"].json()["choices"][0]["text"] == agg.json()["choices"][0]["text"]
    else:
        assert result["r"].status_code == 500
        assert result["r"].json()["error"]["code"] == 500


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_request_blocked_by_leased_blocks_waits_idle_then_runs_on_expiry(
    sim_engine, tmp_path
) -> None:
    import threading
    import time

    small = tmp_path / "small.yaml"
    small.write_text("num_blocks: 8\nblock_size: 16\n")
    p = sim_engine(
        "--zero-cost", "--profile", str(small), env={"VLLM_NIXL_ABORT_REQUEST_TIMEOUT": "3"}
    )
    prefill(p.url, {"prompt": list(range(1000, 1100))})  # 7 of 8 blocks held by the lease
    result: dict[str, httpx.Response] = {}
    body = {"prompt": list(range(2000, 2070)), "max_tokens": 5}
    worker = threading.Thread(
        target=lambda: result.update(r=httpx.post(f"{p.url}/v1/completions", json=body, timeout=30))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while metric(p.url, "vllm:num_requests_waiting") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = p.proc.popen.pid
    before = _cpu_seconds(pid)
    time.sleep(1.0)  # measuring CPU use while blocked, not waiting for readiness
    assert _cpu_seconds(pid) - before < 0.5  # no busy loop while nothing can run
    worker.join(30)
    assert result["r"].status_code == 200  # ran once the lease expired and freed its blocks
    assert result["r"].json()["usage"]["completion_tokens"] == 5


def test_streamed_chat_through_pd_equals_aggregated(sim_engine) -> None:
    import openai

    p, d, agg = (sim_engine("--zero-cost") for _ in range(3))
    body = {
        "model": "sim",
        "messages": [{"role": "user", "content": "Explain prefix caching " * 20}],
        "max_completion_tokens": 9,
    }
    leg = {**body, "kv_transfer_params": prefill_kv_transfer_params(), "stream": False}
    leg["max_tokens"] = leg["max_completion_tokens"] = 1
    params = httpx.post(f"{p.url}/v1/chat/completions", json=leg).json()["kv_transfer_params"]
    client = openai.OpenAI(base_url=f"{d.url}/v1", api_key="x")
    stream = client.chat.completions.create(
        **body,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"kv_transfer_params": params},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = openai.OpenAI(base_url=f"{agg.url}/v1", api_key="x").chat.completions.create(**body)
    assert text == whole.choices[0].message.content and chunks[-1].usage.completion_tokens == 9
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert metric(d.url, "pdserve_sim:kv_pulls_total", outcome="ok") == 1
    # only the last token recomputed
    assert metric(d.url, "pdserve_sim:prefill_tokens_computed_total") == 1
