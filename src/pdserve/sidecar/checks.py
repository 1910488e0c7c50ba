"""What the decode engine would refuse, checked before the prefill leg runs.

The prefill leg asks for one token, no streaming and no stream options, so a prefill engine
accepts a body whose token limit or stream fields the decode engine then refuses: the whole
prefill (seconds on CPU) is wasted. The sidecar cannot tokenize, so it checks what it can:
the sampling fields as vLLM types and bounds them, an output limit above the model's
context, and a prompt of token ids that fills the context alone. vLLM 0.32 refuses
`max_tokens > max_model_len` and clamps a smaller limit to what the prompt leaves, so
`max_tokens == max_model_len` is served there and passed on here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pdserve.logs import event
from pdserve.vllm_request import ApiError, check_request, max_output_tokens

log = logging.getLogger("pdserve.sidecar")

REFRESH_S = 10.0  # an unknown model name re-lists the engine's models at most this often
RETRY_S = 1.0  # after a failed listing, the next try waits this long (a hung engine would
# otherwise hold every request for the listing's timeout)


def check(body: dict[str, Any], chat: bool, max_model_len: int | None) -> None:
    """Raise the ApiError (400) the decode engine would answer, if it is one we can see."""
    values = check_request(body, chat)
    if max_model_len is None:
        return
    limit = max_output_tokens(values)
    if limit is not None and limit[1] > max_model_len:
        key, value = limit
        raise ApiError(
            400,
            f"{key}={value} is more than the model's context, max_model_len={max_model_len}; "
            "ask for fewer output tokens.",
            key,
        )
    tokens = 0 if chat else _token_ids(body.get("prompt"))
    if tokens >= max_model_len:
        raise ApiError(
            400,
            f"the prompt's {tokens} tokens leave no room for output in the model's "
            f"context, max_model_len={max_model_len}.",
            "prompt",
        )


def _token_ids(prompt: Any) -> int:
    """How many tokens a prompt of token ids has (0 for text: only the engine can count)."""
    if isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        return len(prompt)
    return 0


Fetch = Callable[[], Awaitable[list[dict[str, Any]]]]


class ContextLimits:
    """max_model_len per served model, from the local engine's `GET /v1/models` cards.

    Listed once and kept: a model's context does not change while its engine runs. A listing
    that fails is not kept (the engine may still be starting): a request RETRY_S later asks
    again; meanwhile requests pass unchecked and the engine judges them, as before. A name
    not listed (an adapter loaded since) re-lists at most every REFRESH_S.
    """

    def __init__(self, fetch: Fetch, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch, self.clock = fetch, clock
        self.limits: dict[str, int] | None = None
        self.default: str | None = None  # the first card: what a request without `model` gets
        self.listed_at: float | None = None
        self._pending: asyncio.Task[None] | None = None

    async def get(self, model: str | None) -> int | None:
        if self._due(model):
            await self._refresh()
        if self.limits is None:
            return None
        return self.limits.get(model or self.default or "")

    def _due(self, model: str | None) -> bool:
        if self.listed_at is None:
            return True
        since = self.clock() - self.listed_at
        if self.limits is None:
            return since >= RETRY_S
        return bool(model) and model not in self.limits and since >= REFRESH_S

    async def _refresh(self) -> None:
        """One listing at a time: requests arriving meanwhile wait for the same one, and a
        request cancelled (its client gone) does not cancel it for the others."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._list())
        await asyncio.shield(self._pending)

    async def _list(self) -> None:
        self.listed_at = self.clock()
        try:
            cards = await self.fetch()
            self.limits, self.default = _limits(cards), _first_id(cards)
        except Exception as err:  # any failure only means: unchecked until the next listing
            event(log, "model_limits_unavailable", logging.WARNING, error=repr(err))


def _limits(cards: list[dict[str, Any]]) -> dict[str, int]:
    """Each card's max_model_len; an adapter (vLLM lists none for it) has its parent's."""
    own = {str(c["id"]): c["max_model_len"] for c in cards if c.get("max_model_len")}
    for card in cards:
        parent = card.get("parent")
        if card.get("id") not in own and parent in own:
            own[str(card["id"])] = own[parent]
    return {k: int(v) for k, v in own.items()}


def _first_id(cards: list[dict[str, Any]]) -> str | None:
    return str(cards[0]["id"]) if cards else None
