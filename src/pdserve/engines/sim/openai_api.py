"""The OpenAI-compatible request and response shapes, as vLLM's server reads and writes them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


# vLLM's /v1/completions default (chat has none: it runs to EOS or the context limit).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass
class Params:
    chat: bool
    model: str | None
    prompt: str | list[int]
    messages: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    kv_transfer_params: dict[str, Any] | None = None


def _int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{key} must be an integer, got {value!r}.", key)
    if value < minimum:
        raise ApiError(400, f"{key} must be at least {minimum}, got {value}.", key)
    return value


def parse(body: Any, chat: bool) -> Params:
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string.", "model")
    p = Params(chat=chat, model=model, prompt="")
    if chat:
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and "role" in m for m in messages)
        ):
            raise ApiError(
                400, "messages must be a non-empty list of {role, content} objects.", "messages"
            )
        p.messages = messages
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)
        ) or isinstance(prompt, str):
            p.prompt = prompt
        else:
            raise ApiError(
                400,
                "prompt must be a string, a list of token ids, or a list of one of those.",
                "prompt",
            )
    max_tokens = _int(body, "max_completion_tokens", 1) if chat else None
    p.max_tokens = max_tokens if max_tokens is not None else _int(body, "max_tokens", 1)
    if p.max_tokens is None and not chat:
        p.max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise ApiError(400, "n > 1 is not supported by this engine.", "n")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or temperature < 0):
        raise ApiError(400, "temperature must be a non-negative number.", "temperature")
    p.stream = bool(body.get("stream", False))
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise ApiError(400, "stream_options must be an object.", "stream_options")
        if not p.stream:
            raise ApiError(
                400, "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        p.include_usage = bool(opts.get("include_usage", False))
    stop = body.get("stop")
    if isinstance(stop, str):
        p.stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        p.stop = stop
    elif stop is not None:
        raise ApiError(400, "stop must be a string or a list of strings.", "stop")
    p.ignore_eos = bool(body.get("ignore_eos", False))
    kv = body.get("kv_transfer_params")
    if kv is not None and not isinstance(kv, dict):
        raise ApiError(400, "kv_transfer_params must be an object.", "kv_transfer_params")
    p.kv_transfer_params = kv
    return p


def check_kv_params(kv: dict[str, Any]) -> None:
    """A consumer's params are read later, in the pull task: a wrong type found there would
    leave the request waiting for KV forever, so an engine with a connector makes it a 400
    up front (one without a connector ignores the params, as vLLM does)."""
    if not kv.get("do_remote_prefill"):
        return
    blocks = kv.get("remote_block_ids")
    if blocks is not None and not (
        isinstance(blocks, list) and all(isinstance(b, int) and b >= 0 for b in blocks)
    ):
        raise ApiError(
            400,
            "kv_transfer_params.remote_block_ids must be a list of block ids.",
            "kv_transfer_params",
        )
    for key in ("remote_num_tokens", "remote_port"):
        value = kv.get(key)
        if value is not None and not (isinstance(value, int) or str(value).isdigit()):
            raise ApiError(
                400, f"kv_transfer_params.{key} must be an integer.", "kv_transfer_params"
            )


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def full_response(
    p: Params,
    rid: str,
    model: str,
    text: str,
    finish: str | None,
    use: dict[str, Any],
    kv: dict[str, Any] | None,
) -> dict[str, Any]:
    created = int(time.time())
    if p.chat:
        choice = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "reasoning_content": None,
                "tool_calls": [],
            },
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": use,
        "prompt_logprobs": None,
        "kv_transfer_params": kv,
    }


def chunk(
    p: Params,
    rid: str,
    model: str,
    created: int,
    text: str | None,
    finish: str | None = None,
    role: bool = False,
) -> dict[str, Any]:
    if p.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {
            "index": 0,
            "text": text or "",
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


def usage_chunk(
    p: Params, rid: str, model: str, created: int, use: dict[str, Any]
) -> dict[str, Any]:
    obj = "chat.completion.chunk" if p.chat else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": use,
    }
