"""A prompt's tokens as the engine itself counts them, through vLLM's `/tokenize`.

The EPP's precise prefix producer hashes tokens; the engine's own are the surest match
(its tokenizer and chat template, whatever the EPP has on disk). This is the one I/O the
token producer's `vllm` parameter asks for, kept out of the plugins (which do no I/O): the
request path awaits it and hands the plugins the tokens on the Request.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import aiohttp

DEFAULT_TIMEOUT = 5.0  # seconds, the token producer's default for text requests


class EngineTokensError(Exception):
    """The engine gave no tokens: one line naming the URL and why."""


class Prompt(Protocol):
    """What a request to tokenize has (the EPP's Request has these)."""

    model: str
    prompt: str
    messages: list[dict[str, Any]] | None


def tokenize_body(request: Prompt, model: str | None = None) -> dict[str, Any]:
    """vLLM's /tokenize body: chat messages with the generation prompt (the template
    carries the special tokens), or the completions prompt with them, as vLLM serves it."""
    body: dict[str, Any] = {"model": model or request.model}
    if request.messages is not None:
        body |= {"messages": request.messages, "add_generation_prompt": True}
        body["add_special_tokens"] = False
    else:
        body |= {"prompt": request.prompt, "add_special_tokens": True}
    return body


async def engine_tokens(
    session: aiohttp.ClientSession,
    url: str,
    request: Prompt,
    *,
    model: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[int]:
    """POST {url}/tokenize within `timeout` seconds in all; `model` overrides the
    request's. Raises EngineTokensError for every failure, so the caller can fall back
    to a local tokenizer in one `except`."""
    endpoint = url.rstrip("/") + "/tokenize"
    try:
        async with session.post(
            endpoint,
            json=tokenize_body(request, model),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise EngineTokensError(f"{endpoint}: HTTP {resp.status}: {_reason(text)}")
    except TimeoutError:  # aiohttp's, and asyncio's, are TimeoutError on Python 3.11+
        raise EngineTokensError(f"{endpoint}: no answer within {timeout:g}s") from None
    except aiohttp.ClientError as err:
        raise EngineTokensError(f"{endpoint}: {type(err).__name__}: {err}") from None
    return _tokens(endpoint, text)


def _tokens(endpoint: str, text: str) -> list[int]:
    try:
        tokens = json.loads(text).get("tokens")
    except (ValueError, AttributeError):
        raise EngineTokensError(f"{endpoint}: the answer is not a JSON object") from None
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise EngineTokensError(f"{endpoint}: the answer has no list of integer tokens")
    return tokens


def _reason(text: str) -> str:
    """vLLM's error message, else the start of the body, on one line."""
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:200]
    return " ".join(str(message).split()) or "no body"
