"""What the sidecar refuses before a prefill leg, and how it learns the model's context."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from pdserve.sidecar.checks import REFRESH_S, RETRY_S, ContextLimits, check
from pdserve.vllm_request import ApiError

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"stream": "maybe"}, "stream"),
        ({"stream": 2}, "stream"),
        ({"n": 1.5}, "n"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 2.5}, "max_completion_tokens"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 101}, "max_completion_tokens"),
    ],
)
def test_what_vllm_refuses_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        check({**CHAT, **fields}, chat=True, max_model_len=100)
    assert caught.value.status == 400 and caught.value.param == param


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": "0.5", "top_p": 1, "top_k": -1, "n": 2, "stream": "true"},
        {"max_tokens": 100},  # vLLM clamps to what the prompt leaves; only more is refused
        {"max_tokens": 101, "max_completion_tokens": 100},  # the chat field wins
        {"max_tokens": 5.0, "stop": "x", "seed": "7", "stream": True, "stream_options": {}},
        {"temperature": None, "max_tokens": None},
        {"stream_options": {}},  # empty options need no stream, as in vLLM
    ],
)
def test_what_vllm_accepts_passes(fields: dict[str, Any]) -> None:
    check({**CHAT, **fields}, chat=True, max_model_len=100)


def test_completions_limits_and_token_prompts() -> None:
    check({"prompt": "x", "max_completion_tokens": 101}, chat=False, max_model_len=100)
    check({"prompt": list(range(99)), "max_tokens": 100}, chat=False, max_model_len=100)
    with pytest.raises(ApiError) as caught:
        check({"prompt": list(range(100))}, chat=False, max_model_len=100)
    assert caught.value.param == "prompt" and "max_model_len=100" in caught.value.message
    check({"prompt": list(range(100))}, chat=False, max_model_len=None)  # limit unknown


def test_an_unknown_context_still_checks_the_fields() -> None:
    check({**CHAT, "max_tokens": 10**9}, chat=True, max_model_len=None)
    with pytest.raises(ApiError):
        check({**CHAT, "top_p": 2}, chat=True, max_model_len=None)


class Engine:
    """A fake `GET /v1/models`: the cards it lists, or the error it fails with."""

    def __init__(self) -> None:
        self.cards: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.calls = 0

    async def fetch(self) -> list[dict[str, Any]]:
        self.calls += 1
        await asyncio.sleep(0)  # concurrent callers overlap here
        if self.error is not None:
            raise self.error
        return self.cards


BASE = {"id": "base", "max_model_len": 2048, "parent": None}
ADAPTER = {"id": "sql", "max_model_len": None, "parent": "base"}


async def test_limits_are_listed_once_and_a_failed_listing_is_retried() -> None:
    now = [100.0]
    engine = Engine()
    engine.error = OSError("connection refused")
    limits = ContextLimits(engine.fetch, clock=lambda: now[0])
    assert await limits.get("base") is None  # the engine is not up: unchecked
    engine.error = None
    engine.cards = [BASE, ADAPTER]
    # Not at once: a hung engine would hold every request for the listing's timeout.
    assert await limits.get("base") is None and engine.calls == 1
    now[0] += RETRY_S
    assert await limits.get("base") == 2048 and engine.calls == 2
    assert await limits.get(None) == 2048  # no model: the first card, as vLLM serves it
    assert await limits.get("sql") == 2048  # an adapter has its base's context
    assert engine.calls == 2


async def test_concurrent_first_requests_share_one_listing() -> None:
    engine = Engine()
    engine.cards = [BASE]
    limits = ContextLimits(engine.fetch)
    assert await asyncio.gather(*(limits.get("base") for _ in range(5))) == [2048] * 5
    assert engine.calls == 1


async def test_an_unknown_model_relists_at_most_every_refresh_period() -> None:
    now = [100.0]
    engine = Engine()
    engine.cards = [BASE]
    limits = ContextLimits(engine.fetch, clock=lambda: now[0])
    assert await limits.get("base") == 2048
    assert await limits.get("new") is None and engine.calls == 1  # listed just now
    now[0] += REFRESH_S
    engine.cards = [BASE, {"id": "new", "max_model_len": 512}]
    assert await limits.get("new") == 512 and engine.calls == 2
    assert await limits.get("new") == 512 and engine.calls == 2
