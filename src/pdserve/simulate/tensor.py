"""Tensor parallelism in the simulator's cost model: the sim engine accepts
--tensor-parallel-size but times every step as one GPU, so a fleet planner comparing TP 1
with TP 4 needs the envelope of a TP group.

A TP group of `size` GPUs splits the weights and the KV heads: the per-token prefill cost
and the decode step's weight and KV reads shrink by the group's speedup, `size` times
EFFICIENCY per doubling (all-reduces after every layer cost the rest: 0.9 gives 1.8x at 2,
3.2x at 4, 5.8x at 8, the order vLLM reaches on NVLink). The fixed per-step overheads
(kernel launches, scheduling) do not shrink, and KV capacity grows `size` times (each GPU
holds 1/size of every block).
"""

from __future__ import annotations

import math
from dataclasses import replace

from pdserve.engines.sim.profile import Profile

EFFICIENCY = 0.9  # the speedup kept per doubling of the TP group


def speedup(size: int) -> float:
    return size * EFFICIENCY ** math.log2(size) if size > 1 else 1.0


def tensor_parallel(profile: Profile, size: int) -> Profile:
    """`profile` (one GPU's envelope) for a TP group of `size` GPUs."""
    if size <= 1:
        return profile
    s = speedup(size)
    return replace(
        profile,
        prefill_ms_per_token=profile.prefill_ms_per_token / s,
        decode_base_ms=profile.decode_base_ms / s,
        decode_ms_per_seq=profile.decode_ms_per_seq / s,
        decode_ms_per_ctx_token=profile.decode_ms_per_ctx_token / s,
        num_blocks=profile.num_blocks * size,
    )
