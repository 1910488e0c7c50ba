"""The timing and cache model as a library, driven in virtual time (no server, no clock)."""

from __future__ import annotations

from pdserve.engines.sim.block_manager import BlockManager, block_hashes
from pdserve.engines.sim.profile import Profile
from pdserve.engines.sim.scheduler import Request, Scheduler
from pdserve.engines.sim.tokens import BuiltinTokenizer, Generator


def test_hashes_chain_so_equal_hashes_mean_equal_prefixes() -> None:
    a = block_hashes(list(range(64)), 16)
    b = block_hashes([*range(16), 99, *range(17, 64)], 16)
    assert len(a) == 4 and a[0] == b[0] and a[1] != b[1] and a[2] != b[2]
    assert block_hashes(list(range(15)), 16) == []


def test_prefix_hits_and_lru_eviction() -> None:
    events: list[tuple] = []
    bm = BlockManager(num_blocks=4, block_size=4, on_event=events.append)
    p1 = list(range(8))
    h1 = block_hashes(p1, 4)
    a = bm.allocate(p1, h1)
    assert a is not None and a.cached_tokens == 0
    bm.commit(a.block_ids, p1, h1)
    bm.release(a.block_ids)
    again = bm.allocate(p1, h1)
    assert again is not None and again.cached_tokens == 8 and again.block_ids == a.block_ids
    bm.release(again.block_ids)
    p2 = list(range(100, 116))  # needs all 4 blocks: both cached blocks are evicted
    b = bm.allocate(p2, block_hashes(p2, 4))
    assert b is not None and bm.num_free == 0
    assert [e[0] for e in events] == ["stored", "removed", "removed"]
    assert bm.allocate(list(range(4)), block_hashes(list(range(4)), 4)) is None


def _sched(profile: Profile) -> Scheduler:
    bm = BlockManager(profile.num_blocks, profile.block_size)
    return Scheduler(profile, Generator(BuiltinTokenizer()), bm)


def _run(s: Scheduler, now: float = 0.0) -> float:
    while s.has_work:
        now += s.step(now).duration
    return now


def test_virtual_time_follows_the_profile() -> None:
    prof = Profile(
        prefill_ms_per_token=1.0, prefill_overhead_ms=0, decode_base_ms=10, decode_ms_per_seq=0
    )
    s = _sched(prof)
    s.add(Request("r", list(range(100)), max_tokens=5, arrival=0, ignore_eos=True))
    end = _run(s)
    # one prefill step (100 tokens) emits the first token, then 4 decode steps
    assert abs(end - (0.100 + 4 * 0.010)) < 1e-9


def test_continuous_batching_admits_up_to_max_num_seqs() -> None:
    s = _sched(Profile(max_num_seqs=2).zero())
    reqs = [Request(f"r{i}", [i, 1, 2], max_tokens=3, arrival=0, ignore_eos=True) for i in range(3)]
    for r in reqs:
        s.add(r)
    s.step(0)
    assert len(s.running) == 2 and len(s.waiting) == 1
    _run(s)
    assert all(r.done and len(r.output) == 3 for r in reqs)
    assert s.blocks.usage == 0


def test_producer_holds_blocks_until_released_or_expired() -> None:
    s = _sched(Profile().zero())
    s.lease_seconds = 5
    r = Request("p", list(range(40)), max_tokens=1, arrival=0, remote_decode=True)
    s.add(r)
    _run(s)
    assert r.done and s.leases and s.blocks.usage > 0
    assert s.expire_leases(4.9) == [] and s.expire_leases(5.0) == ["p"]
    assert s.blocks.usage == 0
