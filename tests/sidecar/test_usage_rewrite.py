"""The cached-tokens usage rewrite and the chunked-decode bookkeeping, as pure functions."""

from __future__ import annotations

import json

from pdserve.sidecar import chunked, usage


def test_the_prefillers_count_is_read_and_missing_means_zero() -> None:
    hit = {"usage": {"prompt_tokens": 40, "prompt_tokens_details": {"cached_tokens": 32}}}
    assert usage.prefill_cached_tokens(hit) == 32
    assert usage.prefill_cached_tokens({"usage": {"prompt_tokens_details": None}}) == 0
    assert usage.prefill_cached_tokens({}) == 0


def test_a_whole_answer_gets_the_prefillers_count() -> None:
    body = json.dumps({"id": "x", "usage": {"prompt_tokens": 40, "prompt_tokens_details": None}})
    out = json.loads(usage.rewrite_json(body.encode(), 32))
    assert out["usage"] == {"prompt_tokens": 40, "prompt_tokens_details": {"cached_tokens": 32}}
    untouched = b'{"id": "x", "usage": null}'
    assert usage.rewrite_json(untouched, 32) == untouched
    assert usage.rewrite_json(b"not json", 32) == b"not json"


def test_sse_lines_split_anywhere_are_rewritten_whole() -> None:
    final = {"choices": [], "usage": {"prompt_tokens_details": {"cached_tokens": 0}}}
    stream = (
        b'data: {"choices": [{"text": "a"}]}\n\n'
        + b"data: "
        + json.dumps(final).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    rewriter = usage.SseRewriter(16)
    out = b"".join(rewriter.feed(stream[i : i + 7]) for i in range(0, len(stream), 7))
    out += rewriter.flush()
    events = [line for line in out.split(b"\n") if line]
    assert events[0] == b'data: {"choices": [{"text": "a"}]}'  # no usage: byte for byte
    assert json.loads(events[1][6:])["usage"]["prompt_tokens_details"]["cached_tokens"] == 16
    assert events[2] == b"data: [DONE]"


def test_chunks_follow_the_budget_and_continue_the_assistant_message() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}
    body["kv_transfer_params"] = {"do_remote_prefill": True}
    chunks = chunked.Chunks(body, 4)
    sizes = []
    while (leg := chunks.next_body()) is not None:
        sizes.append(leg["max_tokens"])
        assert leg["stream"] is False and leg["max_completion_tokens"] == leg["max_tokens"]
        if chunks.index:
            assert "kv_transfer_params" not in leg and leg["continue_final_message"] is True
            assert leg["add_generation_prompt"] is False
            # Upstream appends each chunk's text as an assistant message of its own.
            assert leg["messages"][1:] == [{"role": "assistant", "content": "w"}] * chunks.index
        else:
            assert leg["kv_transfer_params"] == {"do_remote_prefill": True}
        usage_ = {"prompt_tokens": 5, "completion_tokens": leg["max_tokens"]}
        message = {"role": "assistant", "content": "w"}
        chunks.add({"choices": [{"message": message, "finish_reason": "length"}], "usage": usage_})
    assert sizes == [4, 4, 2]
    whole = chunks.whole()
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}
    assert whole["choices"][0]["message"]["content"] == "www"


def test_a_chunk_that_stops_ends_the_decode() -> None:
    chunks = chunked.Chunks({"messages": []}, 4)  # no budget: until the answer ends
    assert not chunks.fits_one() and chunks.next_body() is not None
    chunks.add({"choices": [{"message": {"content": "end"}, "finish_reason": "stop"}]})
    assert chunks.next_body() is None
    assert chunked.Chunks({"max_completion_tokens": 4}, 4).fits_one()
