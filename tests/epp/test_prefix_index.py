"""The prefix index's run-length walk against a plain definition of "leading blocks held"."""

from __future__ import annotations

import random
from collections import OrderedDict

from pdserve.epp.plugins.prefix import LRUIndex


def leading(index: LRUIndex, server: str, hashes: list[int]) -> int:
    n = 0
    for h in hashes:
        if server not in index.holders.get(h, ()):
            break
        n += 1
    return n


def test_matched_counts_each_servers_leading_run() -> None:
    rng = random.Random(7)
    for _ in range(200):
        index = LRUIndex(capacity=1000)
        servers = [f"s{i}" for i in range(rng.randrange(1, 6))]
        universe = list(range(12))
        for s in servers:
            index.add(s, rng.sample(universe, rng.randrange(0, 12)))
        hashes = rng.sample(universe, rng.randrange(0, 12))
        want = {s: leading(index, s, hashes) for s in servers}
        got = index.matched(hashes)
        assert {s: got.get(s, 0) for s in servers} == want
        assert all(v > 0 for v in got.values())


def test_matched_stops_at_first_gap_even_if_later_blocks_are_held() -> None:
    index = LRUIndex(capacity=10)
    index.add("a", [1, 2, 4])
    index.add("b", [1, 2, 3, 4])
    assert index.matched([1, 2, 3, 4]) == {"a": 2, "b": 4}
    assert index.matched([9, 1]) == {}


def test_add_evicts_each_servers_oldest_block_as_remove_would() -> None:
    """`add` inlines the eviction: the same index as adding one block at a time and
    removing each server's least recently used one past capacity through `remove`."""
    rng = random.Random(7)
    index, reference = LRUIndex(capacity=5), LRUIndex(capacity=5)
    for _ in range(300):
        server, hashes = rng.choice("abc"), [rng.randrange(12) for _ in range(rng.randint(0, 4))]
        index.add(server, hashes)
        lru = reference.by_server.setdefault(server, OrderedDict())
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            reference.holders.setdefault(h, set()).add(server)
            if len(lru) > reference.capacity:
                reference.remove(server, next(iter(lru)))
        assert index.by_server == reference.by_server
        assert index.holders == reference.holders
