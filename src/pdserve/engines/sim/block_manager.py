"""Paged KV cache with prefix caching, as vLLM's block pool does it.

A full block is identified by a hash chained over its parent's hash and its tokens, so equal
hashes mean equal prefixes. Freed blocks keep their hash and stay reusable until evicted,
least recently freed first. Every store and eviction is reported to `on_event`, which is
how KV events (BlockStored / BlockRemoved) reach subscribers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# ("stored", hashes, parent_hash, token_ids, lora_id) | ("removed", hashes) | ("cleared",)
CacheEvent = tuple[Any, ...]


@dataclass
class Allocation:
    block_ids: list[int]
    cached_tokens: int  # prompt tokens whose KV was already in the cache


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        on_event: Callable[[CacheEvent], None] | None = None,
        enable_caching: bool = True,
    ) -> None:
        self.enable_caching = enable_caching  # off: every prompt is computed, nothing is stored
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.on_event = on_event
        self.ref = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # block hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.queries = 0  # prompt tokens looked up in the prefix cache
        self.hits = 0  # of those, found

    # --- capacity -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """Share of blocks held by live requests (vLLM's kv_cache_usage_perc, 0..1)."""
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix cache ---------------------------------------------------------------------
    def match(self, hashes: Sequence[bytes]) -> list[int]:
        """Block ids of the longest cached prefix of `hashes`."""
        hit: list[int] = []
        if not self.enable_caching:
            return hit
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            hit.append(block)
        return hit

    def allocate(self, tokens: Sequence[int], hashes: Sequence[bytes]) -> Allocation | None:
        """Blocks for `tokens`, reusing cached ones; None (and no change) if they don't fit."""
        hit = self.match(hashes)
        fresh = self.blocks_for(len(tokens)) - len(hit)
        reusable_free = sum(1 for b in hit if self.ref[b] == 0)
        if fresh > len(self.free) - reusable_free:
            return None
        for block in hit:
            self._take(block)
        ids = hit + self._pop_free(fresh)
        self.queries += len(tokens)
        self.hits += len(hit) * self.block_size
        return Allocation(ids, len(hit) * self.block_size)

    def grow(self, block_ids: list[int], num_tokens: int) -> bool:
        """Make room for `num_tokens` in a request's block table (decode appends)."""
        need = self.blocks_for(num_tokens) - len(block_ids)
        if need <= 0:
            return True
        take = min(need, len(self.free))  # short of free blocks: as many as there are
        block_ids += self._pop_free(take)
        return take == need

    def commit(
        self,
        block_ids: Sequence[int],
        tokens: Sequence[int],
        hashes: Sequence[bytes],
        start: int = 0,
        lora_id: int | None = None,
        offset: int = 0,
    ) -> None:
        """Register computed full blocks (from index `start`) in the prefix cache and
        announce them as BlockStored. `tokens` are the sequence's from token `offset` on
        (at most `start` blocks' worth in: a caller need not copy the whole sequence)."""
        if not self.enable_caching:
            return
        run: list[int] = []  # consecutive newly stored blocks: one BlockStored each, as vLLM
        for i in range(start, min(len(block_ids), len(hashes))):
            block, h = block_ids[i], hashes[i]
            if self.hash_of[block] is not None or h in self.cached:
                self._announce(run, tokens, hashes, lora_id, offset)
                run = []
                continue
            self.hash_of[block] = h
            self.cached[h] = block
            run.append(i)
        self._announce(run, tokens, hashes, lora_id, offset)

    def _announce(
        self,
        run: list[int],
        tokens: Sequence[int],
        hashes: Sequence[bytes],
        lora_id: int | None,
        offset: int,
    ) -> None:
        if not run or self.on_event is None:
            return
        first, bs = run[0], self.block_size
        parent = hashes[first - 1] if first > 0 else None
        toks = list(tokens[first * bs - offset : (run[-1] + 1) * bs - offset])
        self.on_event(("stored", [hashes[i] for i in run], parent, toks, lora_id))

    def release(self, block_ids: Sequence[int]) -> None:
        """Drop one reference; unreferenced blocks stay cached until evicted."""
        ref, free = self.ref, self.free
        for block in reversed(block_ids):  # tail blocks are evicted first, as in vLLM
            ref[block] -= 1
            if ref[block] == 0:
                free[block] = None

    def reset(self) -> bool:
        """Forget every cached prefix (vLLM's reset_prefix_cache). As in vLLM, refused while
        any block is in use, so the cache never holds blocks its subscribers think cleared."""
        if any(self.ref):
            return False
        for block in self.cached.values():
            self.hash_of[block] = None
        self.cached.clear()
        if self.on_event is not None:
            self.on_event(("cleared",))
        return True

    def content(self) -> set[bytes]:
        return set(self.cached)

    # --- internals --------------------------------------------------------------------------
    def _take(self, block: int) -> None:
        if self.ref[block] == 0:
            self.free.pop(block, None)
        self.ref[block] += 1

    def _pop_free(self, count: int) -> list[int]:
        """`count` free blocks, least recently freed first, each evicting the prefix it
        cached (announced as removed). One call per allocation: a P/D request takes dozens."""
        free, ref = self.free, self.ref
        hash_of, cached, on_event = self.hash_of, self.cached, self.on_event
        out: list[int] = []
        for _ in range(count):
            block = free.popitem(last=False)[0]
            h = hash_of[block]
            if h is not None:
                hash_of[block] = None
                del cached[h]
                if on_event is not None:
                    on_event(("removed", [h]))
            ref[block] = 1
            out.append(block)
        return out
