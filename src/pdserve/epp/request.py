"""From an HTTP request (headers + JSON body) to the scheduler's Request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pdserve import json_body, wire
from pdserve.epp.admission import priority
from pdserve.epp.objectives import named
from pdserve.epp.types import Request
from pdserve.request_ids import fit, fresh
from pdserve.tokenization import chatml


class BadRequest(ValueError):
    pass


def prompt_text(body: dict[str, Any]) -> str:
    """The text prefix caching hashes: `prompt`, or ChatML over the chat messages."""
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list):
            raise BadRequest("messages must be a list")
        return chatml([m for m in messages if isinstance(m, dict)])[
            : -len("<|im_start|>assistant\n")
        ]
    return _prompt_field(body.get("prompt", ""))


def _messages(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    return [m for m in messages if isinstance(m, dict)]


def _prompt_field(prompt: Any) -> str:
    """vLLM's `prompt`: a string, token ids, or a batch of either. Token ids become their
    decimal text, each followed by a space, so equal id prefixes hash to equal text prefixes
    and a batch's items cannot run together."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if all(isinstance(t, int) for t in prompt):
            return "".join(f"{t} " for t in prompt)
        return "".join(_prompt_field(p) for p in prompt)
    return str(prompt)


def max_output_tokens(body: dict[str, Any], path: str) -> int | None:
    """The first of the API's cap fields holding a whole non-negative number, as upstream's
    parser reads it (MaxOutputTokensFromPayload): a malformed one is skipped, not refused."""
    if path.split("?")[0].endswith("/responses"):
        keys: tuple[str, ...] = ("max_output_tokens",)
    elif "messages" in body:
        keys = ("max_completion_tokens", "max_tokens")
    else:
        keys = ("max_tokens",)
    for key in keys:
        value = body.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value >= 0:
            return value
        if isinstance(value, float) and value >= 0 and value.is_integer():
            return int(value)
    return None


def parse(
    headers: dict[str, str],
    raw: bytes,
    default_criticality: str | None,
    objectives: Mapping[str, int] | None = None,
) -> Request:
    body: dict[str, Any] = {}
    if raw:
        try:
            body = json_body.loads(raw)
        except ValueError as err:
            raise BadRequest(f"invalid JSON body: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
    rid = headers.get(wire.REQUEST_ID_HEADER) or ""
    if not fit(rid):
        rid = fresh()  # missing, or not one a log line or a header can carry (request_ids)
    crit = headers.get(wire.CRITICALITY_HEADER) or default_criticality
    return Request(
        request_id=rid,
        model=str(body.get("model") or ""),
        prompt=prompt_text(body),
        messages=_messages(body),
        max_output_tokens=max_output_tokens(body, headers.get(":path", "")),
        headers=headers,
        priority=priority(
            crit, headers.get("x-gateway-inference-priority"), named(headers), objectives
        ),
    )
