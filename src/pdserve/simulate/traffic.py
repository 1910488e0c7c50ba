"""A planned request as the fleet sees it: the body bench would send, the EPP's view of it
(request.py's prompt text, which prefix scoring hashes) and the engine's (its tokens through
the chat template), built by the same functions the real components call."""

from __future__ import annotations

from dataclasses import dataclass

from pdserve.bench.client import Target, body
from pdserve.bench.generator import PlannedRequest
from pdserve.epp.request import prompt_text
from pdserve.epp.types import Request as EppRequest
from pdserve.tokenization import Tokenizer, request_tokens


@dataclass
class Inputs:
    routed: EppRequest
    tokens: list[int]
    max_tokens: int | None


class Traffic:
    def __init__(self, tokenizer: Tokenizer, model: str, ignore_eos: bool) -> None:
        self.tokenizer = tokenizer
        self.target = Target("", model, ignore_eos=ignore_eos)

    def inputs(self, planned: PlannedRequest, tokens: list[int]) -> Inputs:
        """`tokens`: the request's as `tokens()` made them (ahead of the loop, see ahead.py)."""
        _, data = body(self.target, planned)
        messages = data.get("messages")
        routed = EppRequest(
            request_id=f"sim-{planned.index}",
            model=str(data["model"]),
            prompt=prompt_text(data),
            messages=messages,
        )
        return Inputs(routed, tokens, data.get("max_tokens"))

    def tokens(self, planned: PlannedRequest) -> list[int]:
        """The prompt's tokens as the engines compute them: the costly part of inputs."""
        data = body(self.target, planned)[1]
        return request_tokens(self.tokenizer, str(data.get("prompt") or ""), data.get("messages"))
