"""Block hashes: the keys by which an engine's prefix cache, its KV events and the EPP's
prefix scorers name a block of tokens. The sim engine and the EPP both import this, so the
EPP's keys equal the engine's.

A full block's hash chains over its parent's: xxh64 of the block's token ids (4-byte little
endian) seeded with the parent hash, the first parent NONE_HASH. vLLM chains the same way
with sha256 (its keys are opaque to consumers).
"""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from pdserve.tokenization import token_bytes

NONE_HASH = 0


def block_hashes(tokens: Sequence[int], block_size: int, seed: int = NONE_HASH) -> list[int]:
    """Chained 64-bit hashes of the full blocks of `tokens`."""
    out: list[int] = []
    parent = seed
    full = len(tokens) // block_size * block_size
    raw = token_bytes(tokens[:full])
    step = 4 * block_size
    for start in range(0, len(raw), step):
        parent = xxhash.xxh64_intdigest(raw[start : start + step], seed=parent)
        out.append(parent)
    return out
