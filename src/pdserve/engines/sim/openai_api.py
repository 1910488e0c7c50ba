"""The OpenAI-compatible request and response shapes, as vLLM's server reads and writes them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


_FLOAT: TypeAdapter[float | None] = TypeAdapter(float | None)
_INT: TypeAdapter[int | None] = TypeAdapter(int | None)
_BOOL: TypeAdapter[bool | None] = TypeAdapter(bool | None)
_STOP: TypeAdapter[str | list[str] | None] = TypeAdapter(
    str | Annotated[list[str], Field(max_length=4)] | None
)
_Rule = tuple[TypeAdapter[Any], Callable[[Any], bool] | None, str]

# The fields vLLM 0.32 types and range-checks before any work is done: pydantic's lax types as
# its request models declare them (so "0.5" is a temperature and 5.0 a token count, as there),
# then its sampling parameters' ranges. A value vLLM accepts is never refused here; a few
# it refuses are let through (null for its non-optional fields) and left to the engine.
_RULES: dict[str, _Rule] = {
    "temperature": (_FLOAT, lambda v: math.isfinite(v) and 0 <= v <= 2, "a number in [0, 2]"),
    "top_p": (_FLOAT, lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (_INT, lambda v: v >= -1, "0 or -1 (off), or at least 1"),
    "min_p": (_FLOAT, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "presence_penalty": (_FLOAT, lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (_FLOAT, lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "repetition_penalty": (_FLOAT, lambda v: math.isfinite(v) and v > 0, "a number above 0"),
    "n": (_INT, lambda v: v >= 1, "at least 1"),
    "max_tokens": (_INT, lambda v: v >= 1, "at least 1"),
    "max_completion_tokens": (_INT, lambda v: v >= 1, "at least 1"),
    "min_tokens": (_INT, lambda v: v >= 0, "at least 0"),
    "seed": (_INT, None, ""),
    "stream": (_BOOL, None, ""),
    "ignore_eos": (_BOOL, None, ""),
    "stop": (_STOP, lambda v: all(v) if isinstance(v, list) else True, "without empty strings"),
}
_CHAT_ONLY = {"max_completion_tokens"}  # a completions request carries it as an unknown field


def check_request(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    """The sampling fields of a request as vLLM reads them (present ones only), or the
    ApiError (400) it would answer. Shared by the sim engine and the sidecar, which must
    refuse before its prefill leg what the decode engine would refuse after it."""
    values: dict[str, Any] = {}
    for key, (adapter, in_range, wanted) in _RULES.items():
        if key not in body or body[key] is None or (key in _CHAT_ONLY and not chat):
            continue
        try:
            value = adapter.validate_python(body[key])
        except ValidationError as err:
            reason = err.errors()[0]["msg"]
            raise ApiError(400, f"{key}: {reason}, got {body[key]!r}.", key) from None
        if in_range is not None and not in_range(value):
            raise ApiError(400, f"{key} must be {wanted}, got {value!r}.", key)
        values[key] = value
    _check_together(body, values)
    return values


def _check_together(body: dict[str, Any], values: dict[str, Any]) -> None:
    """The rules that tie two fields together."""
    limit = max_output_tokens(values)
    if limit is not None and values.get("min_tokens", 0) > limit[1]:
        raise ApiError(
            400, f"min_tokens must be at most {limit[0]}={limit[1]}, got {values['min_tokens']}."
        )
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object.", "stream_options")
    if opts and not body.get("stream"):  # vLLM looks at the raw values here, before typing
        raise ApiError(
            400, "Stream options can only be defined when `stream=True`.", "stream_options"
        )


def max_output_tokens(values: dict[str, Any]) -> tuple[str, int] | None:
    """(field, value) of the output limit a request sets: a chat's max_completion_tokens
    wins over max_tokens, as in vLLM."""
    for key in ("max_completion_tokens", "max_tokens"):
        if values.get(key) is not None:
            return key, int(values[key])
    return None


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
    values = check_request(body, chat)
    limit = max_output_tokens(values)
    p.max_tokens = limit[1] if limit else None
    if p.max_tokens is None and not chat:
        p.max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    if values.get("n", 1) != 1:
        raise ApiError(400, "n > 1 is not supported by this engine.", "n")
    p.stream = bool(values.get("stream"))
    opts = body.get("stream_options")
    p.include_usage = bool(opts.get("include_usage", False)) if opts else False
    stop = values.get("stop")
    p.stop = [stop] if isinstance(stop, str) else stop or []
    p.ignore_eos = bool(values.get("ignore_eos"))
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
