"""The token producer's `vllm`: the precise producer says where the engine tokenizes, and
scores the tokens the request path brings (Request.prompt_tokens) instead of its own."""

from __future__ import annotations

import pytest

from pdserve.engine_tokens import DEFAULT_TIMEOUT
from pdserve.epp.config import load
from pdserve.epp.framework import ConfigError
from pdserve.epp.plugins.prefix import PrecisePrefixProducer
from pdserve.epp.types import Cycle, Endpoint, Request

CONFIG = """
plugins:
- type: token-producer
  parameters: {{modelName: org/model{vllm}}}
- type: precise-prefix-cache-producer
  parameters: {{tokenProcessorConfig: {{blockSize: 4}}}}
- type: prefix-cache-scorer
  parameters: {{prefixMatchInfoProducerName: precise-prefix-cache-producer}}
schedulingProfiles:
- name: a
  plugins: [{{pluginRef: prefix-cache-scorer}}]
"""


def producer(vllm: str = "") -> PrecisePrefixProducer:
    found = load(CONFIG.format(vllm=vllm)).plugins["precise-prefix-cache-producer"]
    assert isinstance(found, PrecisePrefixProducer)
    return found


def test_the_producer_says_which_engine_tokenizes_and_how_long_to_wait() -> None:
    assert producer().remote_tokenizer_url is None
    default = producer(", vllm: {}")
    assert default.remote_tokenizer_url == "http://localhost:8000"
    assert default.remote_tokenizer_timeout == DEFAULT_TIMEOUT
    v010 = producer(', vllm: {url: "http://10.0.0.7:8000/", timeout: 250ms}')
    assert v010.remote_tokenizer_url == "http://10.0.0.7:8000"
    assert v010.remote_tokenizer_timeout == 0.25
    assert producer(", vllm: {http: http://render:8200}").remote_tokenizer_url == (
        "http://render:8200"
    )


def test_a_bad_engine_timeout_or_field_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"parameters\.vllm\.timeout: not a duration") as err:
        producer(", vllm: {timeout: soon}")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"parameters\.vllm\.grpc: unknown parameter"):
        producer(", vllm: {grpc: x}")


def test_tokens_the_request_brings_are_the_ones_matched() -> None:
    p = producer(", vllm: {}")
    engine = Endpoint("10.0.0.1", 8000)
    tokens = list(range(100, 108))  # two blocks of 4
    p.apply_event(engine.address, ["BlockStored", p.scheme.hashes(tokens, 4), None, [], 4, None])
    fetched = Request("r1", "m", "any text at all", prompt_tokens=tokens)
    match = p.match(Cycle(now=0.0), fetched)
    assert match.total == 2 and p.matched_blocks(match, engine) == 2
    local = Request("r2", "m", "any text at all")  # no engine tokens: the local tokenizer's
    assert p.matched_blocks(p.match(Cycle(now=0.0), local), engine) == 0


def test_only_the_multimodal_timeout_is_inert() -> None:
    cfg = load(CONFIG.format(vllm=", vllm: {url: http://e:8000, timeout: 5s, mmTimeout: 30s}"))
    assert cfg.plugins["token-producer"].inert() == {
        "vllm.mmTimeout": "text only: no multimodal inputs"
    }


async def test_the_director_asks_the_engine_before_scheduling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A /tokenize on 127.0.0.1 answers the engine's tokens; the decision matches on them.
    With the engine gone the request is still routed, on the local tokenizer, and logged."""
    import json

    from aiohttp import web

    from pdserve.epp.datastore import Datastore, StaticSource
    from pdserve.epp.director import Director
    from pdserve.epp.metrics import EppMetrics
    from pdserve.epp.scheduler import Scheduler
    from pdserve.process import free_port

    tokens = list(range(100, 108))
    asked: list[dict[str, object]] = []

    async def tokenize(request: web.Request) -> web.Response:
        asked.append(await request.json())
        return web.json_response({"count": 8, "max_model_len": 64, "tokens": tokens})

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        for url, hit in (
            (f"http://127.0.0.1:{port}", 1.0),
            (f"http://127.0.0.1:{free_port()}", 0.0),
        ):
            cfg = load(CONFIG.format(vllm=f", vllm: {{url: {url}}}"))
            engine = Endpoint("10.0.0.1", 8000)
            store = Datastore(StaticSource([engine]))
            store.refresh()
            d = Director(Scheduler(cfg), store, EppMetrics())
            p = cfg.plugins["precise-prefix-cache-producer"]
            assert isinstance(p, PrecisePrefixProducer)
            p.apply_event(
                "10.0.0.1", ["BlockStored", p.scheme.hashes(tokens, 4), None, [], 4, None]
            )
            body = json.dumps({"model": "m", "prompt": "some text"}).encode()
            with caplog.at_level("WARNING", logger="pdserve.epp"):
                result, _ = await d.route({}, body)
            scores = result.profiles["a"].scores["prefix-cache-scorer"]
            assert scores == {"10.0.0.1:8000": hit}
            await d.close()
        assert asked == [{"model": "m", "prompt": "some text", "add_special_tokens": True}]
        assert caplog.records[0].getMessage() == "engine_tokenize_failed"
    finally:
        await runner.cleanup()


async def test_a_stalled_engine_tokenizer_is_a_503_at_the_decision_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An engine that takes the /tokenize call and never answers (its timeout is longer):
    the request is answered 503 with a Retry-After at the EPP's deadline, not left to
    Envoy's wait, and logged under its id."""
    import asyncio
    import json
    import time

    from aiohttp import web

    from pdserve.epp.datastore import Datastore, StaticSource
    from pdserve.epp.director import Director
    from pdserve.epp.extproc import ExtProc
    from pdserve.epp.metrics import EppMetrics
    from pdserve.epp.scheduler import Scheduler
    from pdserve.process import free_port

    never = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await never.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/tokenize", stall)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        cfg = load(CONFIG.format(vllm=f", vllm: {{url: http://127.0.0.1:{port}, timeout: 30s}}"))
        store = Datastore(StaticSource([Endpoint("10.0.0.1", 8000)]))
        store.refresh()
        d = Director(Scheduler(cfg), store, EppMetrics(), deadline=0.2)
        body = json.dumps({"model": "m", "prompt": "some text"}).encode()
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="pdserve.epp"):
            out = await ExtProc(d)._answer({"x-request-id": "stalled-1"}, body, "body")
        assert time.monotonic() - t0 < 5
        answer = out.immediate_response
        headers = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
        assert answer.status.code == 503 and headers["retry-after"] == "1"
        error = json.loads(answer.body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == 503
        assert "tokenizer" in error["message"]
        [line] = [r for r in caplog.records if r.getMessage() == "decision_deadline"]
        assert line.fields["request_id"] == "stalled-1"
        await d.close()
    finally:
        never.set()
        await runner.cleanup()
