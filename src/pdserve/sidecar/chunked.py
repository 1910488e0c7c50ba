"""Chunked decode (`--decode-chunk-size N`), as llm-d-router v0.10's sidecar runs it.

A chat completion is decoded as a series of whole (unstreamed) requests of at most N tokens
each, so no single engine request holds its slot for the whole answer. After the first
chunk the KV handle is dropped (the decode engine holds the prompt's cache by then), the
text so far is appended to the conversation as an assistant message, and the engine is
told to continue that message (`continue_final_message`, no generation prompt). It stops
when the client's token budget is spent, a chunk finishes for any reason but `length`, or a
chunk produces nothing. The client sees one answer with the text joined and the usage
summed (prompt tokens from the first chunk), or, when it streamed, one event per chunk and
a last event with that usage before `[DONE]`. A budget that fits in one chunk is not
chunked at all.
"""

from __future__ import annotations

import copy
import json
from typing import Any

PATH = "/v1/chat/completions"


def budget(body: dict[str, Any]) -> int:
    """The client's output limit (max_completion_tokens first), -1 for none."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
    return -1


def chunk_body(body: dict[str, Any], tokens: int, index: int) -> dict[str, Any]:
    leg = dict(body)
    leg["max_tokens"] = leg["max_completion_tokens"] = tokens
    leg["stream"] = False
    leg.pop("stream_options", None)
    if index > 0:
        leg.pop("kv_transfer_params", None)
        leg["continue_final_message"] = True
        leg["add_generation_prompt"] = False
    return leg


def _first_choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, dict) else {}


def text_of(answer: dict[str, Any]) -> str:
    message = _first_choice(answer).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def finish_reason(answer: dict[str, Any]) -> str:
    reason = _first_choice(answer).get("finish_reason")
    return reason if isinstance(reason, str) else ""


def usage_of(answer: dict[str, Any], key: str) -> int:
    usage = answer.get("usage")
    value = usage.get(key) if isinstance(usage, dict) else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def sse_event(answer: dict[str, Any]) -> bytes:
    """A whole chunk answer as one streamed event: each choice's text as a delta, no usage
    (the summed usage comes last)."""
    event = {k: v for k, v in answer.items() if k != "usage"}
    choices = answer.get("choices")
    if isinstance(choices, list) and choices:
        event["choices"] = [
            {
                "index": c.get("index"),
                "finish_reason": c.get("finish_reason"),
                "delta": {"content": text_of({"choices": [c]}), "role": "assistant"},
            }
            for c in choices
            if isinstance(c, dict)
        ]
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class Chunks:
    """The state of one chunked decode: the conversation so far and the summed usage."""

    def __init__(self, body: dict[str, Any], size: int) -> None:
        self.body = copy.deepcopy(body)
        self.size = size
        self.limit = budget(body)
        self.index = 0
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.text = ""
        self.last: dict[str, Any] | None = None
        self.done = False

    def fits_one(self) -> bool:
        return 0 < self.limit <= self.size

    def next_body(self) -> dict[str, Any] | None:
        """The next chunk's request, None when the budget is spent or the answer ended."""
        if self.done:
            return None
        left = -1 if self.limit < 0 else max(self.limit - self.completion_tokens, 0)
        if left == 0:
            return None
        tokens = self.size if left < 0 else min(self.size, left)
        return chunk_body(self.body, tokens, self.index)

    def add(self, answer: dict[str, Any]) -> None:
        tokens, text = usage_of(answer, "completion_tokens"), text_of(answer)
        if self.index == 0:
            self.prompt_tokens = usage_of(answer, "prompt_tokens")
        self.index += 1
        self.completion_tokens += tokens
        self.text += text
        self.last = answer
        reason = finish_reason(answer)
        if (reason and reason != "length") or (tokens == 0 and not text):
            self.done = True
            return
        if text:
            messages = self.body.get("messages")
            history = list(messages) if isinstance(messages, list) else []
            self.body["messages"] = [*history, {"role": "assistant", "content": text}]

    def usage(self) -> dict[str, Any]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }

    def whole(self) -> dict[str, Any]:
        """The one answer a client that did not stream gets."""
        answer = dict(self.last or {})
        answer["usage"] = self.usage()
        choice = dict(_first_choice(answer))
        if isinstance(choice.get("message"), dict):
            choice["message"] = {**choice["message"], "content": self.text}
        if choice:
            answer["choices"] = [choice]
        return answer
