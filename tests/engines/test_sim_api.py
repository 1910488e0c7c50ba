"""The sim engine speaks vLLM's OpenAI API: official client, raw HTTP, and errors."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from pdserve import wire
from testkit import metric, reset_after_first_event


@pytest.fixture
def engine(sim_engine):
    return sim_engine("--zero-cost")


def test_openai_client_completion_and_chat(engine) -> None:
    client = openai.OpenAI(base_url=f"{engine.url}/v1", api_key="x")
    comp = client.completions.create(model="sim", prompt="The quick brown fox", max_tokens=7)
    assert comp.choices[0].finish_reason == "length"
    assert comp.usage.completion_tokens == 7 and comp.usage.prompt_tokens > 0
    assert comp.choices[0].text.strip()
    chat = client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=4
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 4


def test_openai_client_streaming_matches_whole(engine) -> None:
    client = openai.OpenAI(base_url=f"{engine.url}/v1", api_key="x")
    messages = [{"role": "user", "content": "Tell me a story about caches."}]
    whole = client.chat.completions.create(model="sim", messages=messages, max_tokens=12)
    stream = client.chat.completions.create(
        model="sim",
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_raw_sse_ends_with_done(engine) -> None:
    with httpx.stream(
        "POST",
        f"{engine.url}/v1/completions",
        json={"prompt": "abc", "max_tokens": 3, "stream": True},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) == 3 + 1 + 1  # tokens, finish chunk, [DONE]


def test_prefix_cache_reports_cached_tokens(engine) -> None:
    prompt = "shared system prompt " * 40
    body = {"model": "sim", "prompt": prompt, "max_tokens": 1}
    first = httpx.post(f"{engine.url}/v1/completions", json=body).json()
    second = httpx.post(f"{engine.url}/v1/completions", json=body).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"] - 16


def test_stop_string_and_ignore_eos(engine) -> None:
    body = {"prompt": "count", "max_tokens": 20}
    text = httpx.post(f"{engine.url}/v1/completions", json=body).json()["choices"][0]["text"]
    word = text.split()[2]
    stopped = httpx.post(f"{engine.url}/v1/completions", json={**body, "stop": [word]}).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert word not in stopped["choices"][0]["text"]
    # Ended by the server, not the client: not counted as an abort.
    assert metric(engine.url, "vllm:request_success_total", finished_reason="abort") == 0
    natural = httpx.post(
        f"{engine.url}/v1/completions", json={"prompt": "count", "max_tokens": 300}
    ).json()
    assert natural["choices"][0]["finish_reason"] == "stop"  # EOS at its natural length
    default = httpx.post(f"{engine.url}/v1/completions", json={"prompt": "count"}).json()
    assert default["usage"]["completion_tokens"] == 16  # vLLM's completions default
    forced = httpx.post(
        f"{engine.url}/v1/completions",
        json={"prompt": "count", "ignore_eos": True, "max_tokens": 300},
    ).json()
    assert forced["usage"]["completion_tokens"] == 300


def test_a_natural_eos_counts_as_a_completion_token_and_adds_no_text(engine) -> None:
    body = {"prompt": "count", "max_tokens": 300}
    natural = httpx.post(f"{engine.url}/v1/completions", json=body).json()
    assert natural["choices"][0]["finish_reason"] == "stop"
    n = natural["usage"]["completion_tokens"]
    # The same continuation without the EOS: one token fewer, the same text (as vLLM counts).
    forced = httpx.post(
        f"{engine.url}/v1/completions", json={**body, "max_tokens": n - 1, "ignore_eos": True}
    ).json()
    assert forced["choices"][0]["finish_reason"] == "length"
    assert forced["choices"][0]["text"] == natural["choices"][0]["text"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_spanning_two_tokens_is_cut_where_it_starts(engine, stream) -> None:
    body = {"prompt": "span", "max_tokens": 12, "ignore_eos": True}
    text = httpx.post(f"{engine.url}/v1/completions", json=body).json()["choices"][0]["text"]
    words = text.split(" ")  # " w1 w2 ...": the tokens are whole words with a space
    k = 3
    stop = words[k][-2:] + " " + words[k + 1][:2]  # the end of one token, the start of the next
    expected = text[: text.index(stop)]
    resp = httpx.post(
        f"{engine.url}/v1/completions", json={**body, "stop": [stop], "stream": stream}
    )
    if stream:
        got = "".join(
            json.loads(line[6:])["choices"][0]["text"]
            for line in resp.text.splitlines()
            if line.startswith("data: {")
        )
    else:
        got = resp.json()["choices"][0]["text"]
    assert got == expected


def test_models_health_metrics(engine) -> None:
    models = httpx.get(f"{engine.url}/v1/models").json()
    assert models["data"][0]["id"] == "sim"
    assert httpx.get(f"{engine.url}/health").status_code == 200
    text = httpx.get(f"{engine.url}/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:cache_config_info",
    ):
        assert name in text, name


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/completions", b"{not json", 400, "Invalid JSON"),
        ("/v1/completions", b"[" * 100_000, 400, "nested too deeply"),
        ("/v1/completions", b'{"model": "other", "prompt": "x"}', 404, "does not exist"),
        ("/v1/completions", b'{"model": "sim"}', 400, "prompt"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "n": 2}',
            400,
            "n > 1",
        ),
        (
            "/v1/completions",
            b'{"prompt": "x", "stream_options": {"include_usage": true}}',
            400,
            "stream",
        ),
        (
            "/v1/completions",
            b'{"prompt": "' + b"word " * 9000 + b'"}',
            400,
            "maximum context length",
        ),
        ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, "temperature"),
        ("/v1/completions", b'{"prompt": "x", "temperature": -0.5}', 400, "temperature"),
        ("/v1/completions", b'{"prompt": "x", "top_p": 0}', 400, "top_p"),
        ("/v1/completions", b'{"prompt": "x", "top_p": 1.5}', 400, "top_p"),
        ("/v1/completions", b'{"prompt": "x", "stream": "maybe"}', 400, "stream"),
        ("/v1/completions", b'{"prompt": "x", "n": 1.5}', 400, "n"),
        ("/v1/completions", b'{"prompt": "x", "stop": [""]}', 400, "stop"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 2, "min_tokens": 3}', 400, "min"),
        ("/v1/nope", b"{}", 404, "Not Found"),
        ("/v1/models", b"{}", 405, "Method Not Allowed"),
    ],
)
def test_bad_input_gets_vllm_error_and_engine_keeps_serving(engine, path, body, status, needle):
    resp = httpx.post(engine.url + path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status
    err = resp.json()
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["code"] == status and needle in err["error"]["message"]
    assert err["error"]["type"] == wire.error_type(status)
    ok = httpx.post(f"{engine.url}/v1/completions", json={"prompt": "still alive", "max_tokens": 2})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "fields",
    [{"temperature": "0.5"}, {"top_p": 1}, {"stream": "false"}, {"n": 1.0}, {"max_tokens": "2"}],
)
def test_sampling_fields_vllm_accepts_are_accepted(engine, fields) -> None:
    """vLLM reads its fields with pydantic's lax types: a numeric string is a number."""
    resp = httpx.post(f"{engine.url}/v1/completions", json={"prompt": "x", **fields})
    assert resp.status_code == 200, resp.text


def test_a_prompt_longer_than_the_token_budget_finishes_at_zero_cost(sim_engine) -> None:
    """Chunked prefill steps cost nothing at --zero-cost: they are still progress."""
    engine = sim_engine("--zero-cost", "--max-num-batched-tokens", "16")
    body = {"prompt": list(range(100, 200)), "max_tokens": 3}
    resp = httpx.post(f"{engine.url}/v1/completions", json=body, timeout=20)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 3


def test_missing_model_uses_served_model_like_vllm(engine) -> None:
    resp = httpx.post(f"{engine.url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert resp.status_code == 200 and resp.json()["model"] == "sim"


def test_out_of_vocabulary_token_ids_are_a_400(engine) -> None:
    resp = httpx.post(f"{engine.url}/v1/completions", json={"prompt": [1, 2**40], "max_tokens": 1})
    assert resp.status_code == 400 and "out of vocabulary" in resp.json()["error"]["message"]
    ok = httpx.post(f"{engine.url}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 1})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 3


def test_request_log_line_carries_the_callers_request_id(engine) -> None:
    import json

    resp = httpx.post(
        f"{engine.url}/v1/completions",
        json={"prompt": "trace me", "max_tokens": 2},
        headers={"x-request-id": "trace-42"},
    )
    assert resp.json()["id"].startswith("cmpl-trace-42")
    lines = [json.loads(ln) for ln in engine.proc.log_path.read_text().splitlines()]
    done = [e for e in lines if e["event"] == "request_done" and e["x_request_id"] == "trace-42"]
    assert len(done) == 1 and done[0]["pd_role"] == "local"
    assert done[0]["completion_tokens"] == 2 and done[0]["e2e_ms"] >= done[0]["ttft_ms"] >= 0


def test_client_disconnect_mid_stream_aborts_and_frees_blocks(sim_engine, tmp_path) -> None:
    import time

    slow = tmp_path / "slow.yaml"
    slow.write_text("decode_base_ms: 20\n")
    engine = sim_engine("--profile", str(slow))
    body = {"prompt": "long story " * 30, "max_tokens": 500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{engine.url}/v1/completions", json=body) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
        assert metric(engine.url, "vllm:num_requests_running") == 1
    deadline = time.monotonic() + 10
    while metric(engine.url, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)  # polling an observable after the disconnect
    assert metric(engine.url, "vllm:num_requests_running") == 0
    assert metric(engine.url, "vllm:kv_cache_usage_perc") == 0
    assert metric(engine.url, "vllm:request_success_total", finished_reason="abort") == 1


def test_served_timing_follows_the_profile(sim_engine, tmp_path) -> None:
    """Modelled time is really spent: latency is at least what the profile says."""
    prof = tmp_path / "slow.yaml"
    prof.write_text("prefill_ms_per_token: 1.0\nprefill_overhead_ms: 0\ndecode_base_ms: 20\n")
    engine = sim_engine("--profile", str(prof))
    body = {"prompt": list(range(1000, 1400)), "max_tokens": 11, "ignore_eos": True}
    resp = httpx.post(f"{engine.url}/v1/completions", json=body, timeout=60)
    assert resp.status_code == 200
    # 400 prompt tokens at 1 ms, then 10 decode steps of >= 20 ms: at least 0.6 s.
    assert resp.elapsed.total_seconds() >= 0.4 + 10 * 0.020
    assert metric(engine.url, "vllm:time_to_first_token_seconds_sum") >= 0.399  # ms clock


def test_lora_adapters_are_served_listed_and_reported(sim_engine) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    engine = sim_engine(
        "--zero-cost", "--enable-lora", "--lora-modules", "sql=/adapters/sql", "--max-loras", "2"
    )
    cards = {m["id"]: m for m in httpx.get(f"{engine.url}/v1/models").json()["data"]}
    assert cards["sql"]["parent"] == "sim" and cards["sql"]["root"] == "/adapters/sql"
    body = {"prompt": "select from cache " * 20, "max_tokens": 6, "ignore_eos": True}
    base = httpx.post(f"{engine.url}/v1/completions", json={**body, "model": "sim"}).json()
    sql = httpx.post(f"{engine.url}/v1/completions", json={**body, "model": "sql"}).json()
    assert sql["model"] == "sql" and base["model"] == "sim"
    assert sql["choices"][0]["text"] != base["choices"][0]["text"]
    assert sql["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # not the base's cache
    text = httpx.get(f"{engine.url}/metrics").text
    info = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm:lora_requests_info"
    ]
    assert info and {s.labels["max_lora"] for s in info} == {"2"}
    newest = max(info, key=lambda s: s.value)
    assert set(newest.labels) == {"running_lora_adapters", "waiting_lora_adapters", "max_lora"}
    assert any(s.labels["running_lora_adapters"] == "sql" for s in info)
    unknown = httpx.post(f"{engine.url}/v1/completions", json={**body, "model": "nope"})
    assert unknown.status_code == 404


async def test_a_client_gone_between_two_writes_is_one_info_line(caplog) -> None:
    """A write can find the client gone before aiohttp's handler cancellation lands (here it
    never does: the app runs without it): one info line, the request aborted, no traceback."""
    import asyncio
    import logging

    from aiohttp import web

    from pdserve.engines.sim.engine import EngineConfig, SimEngine
    from pdserve.engines.sim.profile import load_profile
    from pdserve.engines.sim.server import Api
    from pdserve.tokenization import BuiltinTokenizer

    caplog.set_level(logging.INFO)
    engine = SimEngine(EngineConfig("sim", load_profile(None), BuiltinTokenizer()))
    await engine.start()
    runner = web.AppRunner(Api(engine).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        await reset_after_first_event(port, "sim", "gone-1")

        def named(name: str) -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage() == name]

        async with asyncio.timeout(10):
            while not named("request_aborted"):
                await asyncio.sleep(0.01)  # polling the log for the abort
    finally:
        await runner.cleanup()
        await engine.stop()
    gone = named("client_disconnected")
    assert len(gone) == 1 and gone[0].levelno == logging.INFO
    assert gone[0].fields["x_request_id"] == "gone-1"
    assert named("request_aborted")[0].fields["x_request_id"] == "gone-1"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("chat", [False, True])
def test_a_10_mb_prompt_is_refused_before_tokenizing(engine, chat: bool) -> None:
    """Refused on its length in characters: tokenizing it took seconds and stalled the
    engine's other requests. The engine's max_model_len (8192) times 64 is far below."""
    text = "word " * 2_000_000
    path, body = (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]})
        if chat
        else ("/v1/completions", {"prompt": text})
    )
    resp = httpx.post(engine.url + path, json={**body, "max_tokens": 1}, timeout=60)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "10000000 characters" in error["message"]
    assert error["param"] == ("messages" if chat else "prompt")
    ok = httpx.post(f"{engine.url}/v1/completions", json={"prompt": "still alive", "max_tokens": 2})
    assert ok.status_code == 200
