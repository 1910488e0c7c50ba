"""The OpenAI-compatible request and response shapes, as vLLM's server reads and writes them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pdserve.vllm_request import ApiError, check_request, max_output_tokens

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


def _messages(messages: Any) -> list[dict[str, Any]]:
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and "role" in m for m in messages)
    ):
        raise ApiError(
            400, "messages must be a non-empty list of {role, content} objects.", "messages"
        )
    return messages


def _prompt(prompt: Any) -> str | list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if (
        isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)
    ) or isinstance(prompt, str):
        return prompt
    raise ApiError(
        400, "prompt must be a string, a list of token ids, or a list of one of those.", "prompt"
    )


def _input(body: Any, chat: bool) -> Params:
    """The model and the input (messages or prompt), read alike for a generation and for
    /tokenize: a body one accepts, the other does too."""
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "model must be a string.", "model")
    p = Params(chat=chat, model=model, prompt="")
    if chat:
        p.messages = _messages(body.get("messages"))
    else:
        p.prompt = _prompt(body.get("prompt"))
    return p


def tokenize_request(body: Any) -> tuple[Params, bool]:
    """A /tokenize body, as vLLM reads it: `messages` makes it a chat one (the generation
    prompt always added, as this engine's chat does), else `prompt`; and whether the
    tokenizer's special tokens are added (`add_special_tokens`: true for a prompt, false
    for messages, whose template carries them)."""
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    chat = "messages" in body
    special = body.get("add_special_tokens", not chat)
    if not isinstance(special, bool):
        raise ApiError(400, "add_special_tokens must be a boolean.", "add_special_tokens")
    return _input(body, chat), special


def parse(body: Any, chat: bool) -> Params:
    p = _input(body, chat)
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
