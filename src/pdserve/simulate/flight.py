"""One client request through the fleet, and what bench would have measured of it.

Times are virtual seconds from the start. A token is timed when its step ends, as the sim
engine delivers it; EOS decodes to no text, so like bench's client it opens no content
chunk and is not timed, but it counts as a completion token (vLLM's usage does).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from pdserve.bench.client import Result
from pdserve.bench.generator import PlannedRequest
from pdserve.engines.sim.scheduler import Request


@dataclass(eq=False)
class Flight:
    planned: PlannedRequest
    decode: Request  # the request on the engine whose tokens the client reads
    prefill: Request | None = None  # the P/D prefill leg, until its KV has been pulled
    prefill_engine: int = -1
    decode_engine: int = -1
    token_times: list[float] = field(default_factory=list)

    def result(self, end: float, error: str | None = None) -> Result:
        arrival = self.planned.at
        out = Result(self.planned, arrival, e2e_ms=(end - arrival) * 1000.0, error=error)
        if error is not None:
            return out
        times = self.token_times
        if times:
            out.ttft_ms = (times[0] - arrival) * 1000.0
            out.itl_ms = [(b - a) * 1000.0 for a, b in itertools.pairwise(times)]
        out.output_tokens = len(self.decode.output)
        return out
