"""The network between a prefill and a decode engine: how long a P/D pull of KV takes.

A pull costs `latency` plus the bytes over `bandwidth`. The bytes are the model's KV per
token (`kv_bytes_per_token`, default 128 KiB: an 8B model in 16-bit, as profile.py assumes)
times the prompt tokens the decode engine does not already hold. Unset parameters come from
the engine profile's own pull model (kv_pull_overhead_ms, kv_pull_ms_per_token), which is
exactly what a sim engine waits on a real clock, so by default simulate and `up --engine
sim` move KV equally fast; setting them asks "what if the link were this fast".
"""

from __future__ import annotations

from dataclasses import dataclass

from pdserve.engines.sim.profile import Profile

MODEL_KV_BYTES_PER_TOKEN = 128 * 1024


@dataclass(frozen=True)
class Link:
    latency_s: float
    bytes_per_s: float  # 0: infinitely fast
    kv_bytes_per_token: int

    def pull_seconds(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        moved = tokens * self.kv_bytes_per_token / self.bytes_per_s if self.bytes_per_s else 0.0
        return self.latency_s + moved


def make_link(
    profile: Profile,
    latency_ms: float | None = None,
    gbytes_per_s: float | None = None,
    kv_bytes_per_token: int | None = None,
) -> Link:
    """The link with any parameter not given taken from `profile`'s pull model."""
    per_token = kv_bytes_per_token or MODEL_KV_BYTES_PER_TOKEN
    if gbytes_per_s is not None:
        rate = gbytes_per_s * 1e9
    elif profile.kv_pull_ms_per_token > 0:
        rate = MODEL_KV_BYTES_PER_TOKEN / (profile.kv_pull_ms_per_token / 1000)
    else:
        rate = 0.0
    latency = profile.kv_pull_overhead_ms if latency_ms is None else latency_ms
    return Link(latency / 1000, rate, per_token)
