"""Reading completion tokens from answers as Envoy streams them past the EPP."""

import json

import pytest

from pdserve.epp import usage as usage_mod
from pdserve.epp.director import BoundedDict
from pdserve.epp.usage import ResponseUsage


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_a_whole_json_answer_in_any_chunking(size: int) -> None:
    body = json.dumps({"choices": [{"text": "hi"}], "usage": {"completion_tokens": 7}}).encode()
    u = ResponseUsage("application/json")
    for c in chunks(body, size):
        u.feed(c)
    assert u.finish() == 7


@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_an_sse_stream_reports_the_usage_event(size: int) -> None:
    events = [
        {"choices": [{"delta": {"content": "a"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 12}},
    ]
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    u = ResponseUsage("text/event-stream; charset=utf-8")
    for c in chunks(stream + b"data: [DONE]\n\n", size):
        u.feed(c)
    assert u.finish() == 12


def test_nothing_is_guessed() -> None:
    no_usage = ResponseUsage("text/event-stream")
    no_usage.feed(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: [DONE]\n\n')
    assert no_usage.finish() is None
    broken = ResponseUsage("application/json")
    broken.feed(b'{"usage": {"completion_tokens": 3')
    assert broken.finish() is None
    odd = ResponseUsage("application/json")
    odd.feed(b'{"usage": {"completion_tokens": true}}')
    assert odd.finish() is None


def test_a_body_over_the_cap_is_dropped_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_mod, "MAX_BODY", 16)
    u = ResponseUsage("application/json")
    u.feed(b'{"usage": {"completion_tokens": 3}, "pad": "' + b"x" * 32)
    u.feed(b'"}')
    assert u.finish() is None


def test_routed_ids_are_bounded_oldest_first() -> None:
    routed = BoundedDict(2)
    for rid in "abc":
        routed[rid] = "m"
    assert list(routed) == ["b", "c"]
