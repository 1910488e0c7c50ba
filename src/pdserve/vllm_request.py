"""What vLLM 0.32 refuses in an OpenAI request body before doing any work, and the error it
answers with: the contract between the sim engine, which serves as vLLM does, and the routing
sidecar, which must refuse before its prefill leg what the decode engine would refuse after
it. Neither owns it, so it lives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
