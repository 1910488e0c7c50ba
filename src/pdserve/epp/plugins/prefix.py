"""Prefix-cache affinity: send a prompt where its prefix was sent before (approximate), or
where the engine reports the blocks are (precise, from vLLM KV events)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import xxhash

from pdserve.epp.framework import PreRequest, Scorer, register
from pdserve.epp.plugins.scorers import _check_block_size
from pdserve.epp.types import Cycle, Endpoint, Request, Result

if TYPE_CHECKING:
    from pdserve.engines.sim.tokens import Tokenizer

HITS = "prefix.hits"  # cycle.state key: endpoint name -> matched fraction, for the P/D handler


def prompt_hashes(model: str, prompt: str, block: int, limit: int) -> list[int]:
    """Chained xxhash64 over full character blocks; block 0 is seeded with the model name."""
    data = prompt.encode()
    prev = xxhash.xxh64_intdigest(model.encode())
    out = []
    for start in range(0, min(len(data) // block, limit) * block, block):
        prev = xxhash.xxh64_intdigest(data[start : start + block], seed=prev)
        out.append(prev)
    return out


class LRUIndex:
    """Block hash -> endpoints holding it, with an LRU of bounded size per endpoint."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.by_server: dict[str, OrderedDict[int, None]] = {}
        self.holders: dict[int, set[str]] = {}

    def add(self, server: str, hashes: list[int]) -> None:
        lru = self.by_server.setdefault(server, OrderedDict())
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            self.holders.setdefault(h, set()).add(server)
            if len(lru) > self.capacity:
                old, _ = lru.popitem(last=False)
                self.remove(server, old, from_lru=False)

    def remove(self, server: str, h: int, from_lru: bool = True) -> None:
        if from_lru:
            self.by_server.get(server, OrderedDict()).pop(h, None)
        holders = self.holders.get(h)
        if holders is not None:
            holders.discard(server)
            if not holders:
                del self.holders[h]

    def clear(self, server: str) -> None:
        for h in list(self.by_server.pop(server, {})):
            self.remove(server, h, from_lru=False)

    def matched(self, hashes: list[int]) -> dict[str, int]:
        """Per server, the number of leading blocks it holds. A server's count is written
        when it drops out of the run, so the walk costs one set test per block, not one
        write per block per server (256 blocks x 64 servers dominated a decision)."""
        counts: dict[str, int] = {}
        alive: set[str] = set()
        n = 0
        for i, h in enumerate(hashes):
            holders = self.holders.get(h)
            if not holders:
                break
            if i == 0:
                alive = set(holders)
            elif not alive <= holders:
                for s in alive - holders:
                    counts[s] = i
                alive &= holders
                if not alive:
                    break
            n = i + 1
        for s in alive:
            counts[s] = n
        return counts

    def size(self) -> int:
        return len(self.holders)


@register("prefix-cache-scorer")
class PrefixCacheScorer(Scorer, PreRequest):
    """Score = longest run of leading blocks sent to that endpoint before / total blocks."""

    defaults = {"hashBlockSize": 64, "maxPrefixBlocksToMatch": 256, "lruCapacityPerServer": 31250}

    def setup(self) -> None:
        self.block = _check_block_size(self)
        self.limit = _check_block_size(self, "maxPrefixBlocksToMatch")
        self.index = LRUIndex(_check_block_size(self, "lruCapacityPerServer"))
        self.lookups = self.hits = 0

    def _hashes(self, cycle: Cycle, req: Request) -> list[int]:
        key = f"prefix.hashes.{self.name}"
        if key not in cycle.state:
            cycle.state[key] = prompt_hashes(req.model, req.prompt, self.block, self.limit)
        return cycle.state[key]

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        hashes = self._hashes(cycle, req)
        matched = self.index.matched(hashes) if hashes else {}
        cycle.state[f"prefix.matched.{self.name}"] = matched
        total = len(hashes) or 1
        scores = {e.name: matched.get(e.name, 0) / total for e in endpoints}
        cycle.state.setdefault(HITS, {}).update(scores)
        return scores

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        hashes = self._hashes(cycle, req)
        self.lookups += 1
        # The index only changes below, so the scoring walk's answer still holds.
        matched = cycle.state.get(f"prefix.matched.{self.name}")
        if matched is None:
            matched = self.index.matched(hashes)
        chosen = [p.endpoint.name for p in result.profiles.values() if p.endpoint is not None]
        # One hit per lookup, however many profiles (decode and prefill) chose a holder, so
        # the hit ratio stays a ratio.
        if any(matched.get(name) for name in chosen):
            self.hits += 1
        for name in chosen:
            self.index.add(name, hashes)


@register("precise-prefix-cache-scorer")
class PrecisePrefixCacheScorer(Scorer):
    """Blocks the engines say they hold (KV events), matched on token-block hashes.

    The index is fed from outside the core (`apply_event`) by the ZMQ subscriber; hashing the
    prompt needs the engines' tokenizer and block hashing, which `tokenize` supplies (the sim
    engine's scheme by default)."""

    defaults = {
        "kvEventsConfig": {},
        "indexerConfig": {},
        "blockSize": None,
        "hashSeed": None,
        "tokenizer": "builtin",
    }

    def setup(self) -> None:
        self._token_processor_fallback({"blockSize": 16, "hashSeed": ""})
        self.block = _check_block_size(self, "blockSize")
        self.holders: dict[int, set[str]] = {}
        self._tokenizer: Tokenizer | None = None

    def _token_processor_fallback(self, defaults: dict[str, Any]) -> None:
        """Upstream configs (llm-d's precise prefix sample) give the block size and hash seed
        under indexerConfig.tokenProcessorConfig; a top-level key still wins. The seed is only
        reported (`--check`): the builtin block hashing, like the sim engine's, takes none."""
        indexer = self.params["indexerConfig"]
        nested = indexer.get("tokenProcessorConfig") if isinstance(indexer, dict) else None
        nested = nested if isinstance(nested, dict) else {}
        for key, default in defaults.items():
            if self.params[key] is None:
                self.params[key] = nested.get(key, default)

    def tokenize(self, text: str) -> list[int]:
        if self._tokenizer is None:
            from pdserve.engines.sim.tokens import BuiltinTokenizer, HFTokenizer

            spec = self.params["tokenizer"]
            self._tokenizer = BuiltinTokenizer() if spec == "builtin" else HFTokenizer(spec)
        return self._tokenizer.encode(text)

    def apply_event(self, pod: str, event: list[Any]) -> None:
        kind = event[0]
        if kind == "BlockStored":
            for h in event[1]:
                self.holders.setdefault(int(h), set()).add(pod)
        elif kind == "BlockRemoved":
            for h in event[1]:
                self.holders.get(int(h), set()).discard(pod)
        elif kind == "AllBlocksCleared":
            for pods in self.holders.values():
                pods.discard(pod)

    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        from pdserve.engines.sim.block_manager import block_hashes

        hashes = block_hashes(self.tokenize(req.prompt), self.block)
        total = len(hashes) or 1
        out = {}
        for e in endpoints:
            n = 0
            for h in hashes:
                if e.address not in self.holders.get(h, ()) and e.name not in self.holders.get(
                    h, ()
                ):
                    break
                n += 1
            out[e.name] = n / total
        cycle.state.setdefault(HITS, {}).update(out)
        return out
