"""The timing and cache model as a library, driven in virtual time (no server, no clock)."""

from __future__ import annotations

from pdserve.block_hashes import Scheme
from pdserve.engines.sim.block_manager import BlockManager
from pdserve.engines.sim.profile import Profile
from pdserve.engines.sim.scheduler import Request, Scheduler, _tally
from pdserve.engines.sim.tokens import Generator
from pdserve.tokenization import BuiltinTokenizer

block_hashes = Scheme().hashes  # vLLM's default scheme, as the sim engine runs it


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


def _plain(**overrides: int) -> Profile:
    """1 ms per prompt token, 10 ms per decode step whatever the batch: easy arithmetic."""
    return Profile(
        prefill_ms_per_token=1.0,
        prefill_overhead_ms=0,
        decode_base_ms=10,
        decode_ms_per_seq=0,
        decode_ms_per_ctx_token=0,
        **overrides,
    )


def test_virtual_time_follows_the_profile() -> None:
    s = _sched(_plain())
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
    _run(s, now=1.0)
    assert all(r.done and len(r.output) == 3 for r in reqs)
    assert [r.scheduled_at for r in reqs] == [0, 0, 1.0]  # the third queued until a slot freed
    assert s.blocks.usage == 0


def test_producer_holds_blocks_until_released_or_expired() -> None:
    s = _sched(Profile().zero())
    s.lease_seconds = 5
    r = Request("p", list(range(40)), max_tokens=1, arrival=0, remote_decode=True)
    s.add(r)
    _run(s)
    assert r.done and s.leases and s.blocks.usage > 0
    assert s.expire_leases(4.9) == [] and [rid for rid, _ in s.expire_leases(5.0)] == ["p"]
    assert s.blocks.usage == 0


def test_chunked_prefill_splits_a_long_prompt_and_shares_steps_with_decodes() -> None:
    s = _sched(_plain(max_num_batched_tokens=64))
    short = Request("short", list(range(10)), max_tokens=50, arrival=0, ignore_eos=True)
    s.add(short)
    s.step(0)  # short's prefill: 10 tokens, first token out
    long = Request("long", list(range(1000, 1150)), max_tokens=1, arrival=0, ignore_eos=True)
    s.add(long)
    steps = [s.step(0) for _ in range(3)]
    # Each step: short decodes one token (1 of the budget), long gets the other 63 tokens.
    assert [st.prefill_tokens for st in steps] == [63, 63, 150 - 126]
    assert all(st.decode_batch == 1 for st in steps)
    assert abs(steps[0].duration - (0.063 + 0.010)) < 1e-9
    assert long.done and len(long.output) == 1  # its first token comes with the last chunk
    assert len(short.output) == 4


def test_a_batch_tally_counts_one_token_after_output_as_decode_and_the_rest_as_prefill() -> None:
    decoding = Request("d", list(range(10)), max_tokens=5, arrival=0, output=[7, 8])
    fresh = Request("f", list(range(20)), max_tokens=5, arrival=0)  # one token, no output yet
    resumed = Request("r", list(range(30)), max_tokens=5, arrival=0, output=[9])
    assert _tally([(decoding, 1), (fresh, 1), (resumed, 31), (decoding, 1)]) == (2, 24, 32)
    assert _tally([]) == (0, 0, 0)


def test_cache_pressure_preempts_the_newest_request_which_then_recomputes() -> None:
    prof = Profile(num_blocks=6, block_size=4, max_num_batched_tokens=1000).zero()
    s = _sched(prof)
    a = Request("a", list(range(8)), max_tokens=12, arrival=0, ignore_eos=True)
    b = Request("b", list(range(100, 108)), max_tokens=12, arrival=0, ignore_eos=True)
    s.add(a)
    s.add(b)
    preempted = []
    while s.has_work:
        preempted += [r.id for r in s.step(0).preempted]
    assert preempted and preempted[0] == "b" and s.num_preemptions >= 1
    assert len(a.output) == len(b.output) == 12
    # Same tokens as without pressure: generation depends on prompt and position only.
    calm = _sched(Profile().zero())
    b2 = Request("b2", list(range(100, 108)), max_tokens=12, arrival=0, ignore_eos=True)
    calm.add(b2)
    _run(calm)
    assert b.output == b2.output
    assert s.blocks.usage == 0


def test_generated_full_blocks_enter_the_prefix_cache() -> None:
    events: list[tuple] = []
    prof = Profile(block_size=4).zero()
    bm = BlockManager(prof.num_blocks, prof.block_size, on_event=events.append)
    s = Scheduler(prof, Generator(BuiltinTokenizer()), bm)
    r = Request("r", list(range(6)), max_tokens=10, arrival=0, ignore_eos=True)
    s.add(r)
    _run(s)
    stored = [h for e in events if e[0] == "stored" for h in e[1]]
    # 6 prompt + 10 output = 16 tokens; the last output token's KV is never computed: 3 blocks.
    assert stored == block_hashes(r.prompt + r.output, 4)[:3]
    parents = [e[2] for e in events if e[0] == "stored"]
    assert parents[0] is None and all(p is not None for p in parents[1:])


def test_consumer_with_everything_cached_skips_the_pull_but_is_reported() -> None:
    s = _sched(Profile(block_size=4).zero())
    prompt = list(range(9))
    warm = Request("warm", prompt, max_tokens=1, arrival=0)
    s.add(warm)
    _run(s)
    consumer = Request("c", prompt, max_tokens=2, arrival=0, remote_prefill={"remote_port": 1})
    s.add(consumer)
    out = s.step(0)
    assert out.kv_pulls == [consumer] and consumer.id not in s.pulling  # only a release
    assert consumer.cached_tokens == 8 and out.prefill_tokens == 1


def test_abort_during_pull_frees_blocks_only_when_the_pull_ends() -> None:
    s = _sched(Profile(block_size=4).zero())
    c = Request("c", list(range(20)), max_tokens=2, arrival=0, remote_prefill={"remote_port": 1})
    s.add(c)
    s.step(0)
    assert "c" in s.pulling and s.blocks.usage > 0
    s.abort(c)
    assert s.blocks.usage > 0  # bytes may still be landing
    assert s.kv_loaded("c", ok=True) is None
    assert s.blocks.usage == 0


def test_decode_steps_slow_down_with_the_batch_context() -> None:
    prof = Profile(decode_base_ms=5, decode_ms_per_seq=0.1, decode_ms_per_ctx_token=0.001)
    s = _sched(prof)
    short = Request("s", list(range(100)), max_tokens=3, arrival=0, ignore_eos=True)
    long = Request("l", list(range(5000, 7000)), max_tokens=3, arrival=0, ignore_eos=True)
    s.add(short)
    s.add(long)
    s.step(0)  # both prefills
    step = s.step(0)  # both decode: contexts 101 and 2001 tokens
    assert step.decode_batch == 2
    assert abs(step.duration - (5 + 0.2 + 0.001 * (101 + 2001)) / 1000) < 1e-12


def test_max_loras_holds_back_a_second_adapter_but_not_requests_behind_it() -> None:
    s = _sched(Profile(max_num_seqs=8).zero())
    a = Request("a", [1, 2, 3], max_tokens=4, arrival=0, ignore_eos=True, lora_id=1)
    b = Request("b", [1, 2, 3], max_tokens=4, arrival=0, ignore_eos=True, lora_id=2)
    base = Request("base", [1, 2, 3], max_tokens=4, arrival=0, ignore_eos=True)
    for r in (a, b, base):
        s.add(r)
    s.step(0)
    assert s.running == [a, base] and list(s.waiting) == [b]  # max_loras=1: b waits its turn
    _run(s)
    assert all(r.done for r in (a, b, base))
    # Same prompt, different adapters: different continuations and separate cache entries.
    assert a.output != b.output and a.output != base.output


def test_adapter_blocks_are_separate_cache_entries_and_events_name_the_adapter() -> None:
    events: list[tuple] = []
    prof = Profile(block_size=4).zero()
    s = Scheduler(prof, Generator(BuiltinTokenizer()), BlockManager(64, 4, events.append))
    prompt = list(range(9))
    s.add(Request("base", prompt, max_tokens=1, arrival=0))
    _run(s)
    lora = Request("lora", prompt, max_tokens=1, arrival=0, lora_id=3)
    s.add(lora)
    _run(s)
    assert lora.cached_tokens == 0
    assert [e[4] for e in events if e[0] == "stored"] == [None, 3]


def test_kv_covering_part_of_the_prompt_leaves_the_rest_to_compute() -> None:
    s = _sched(Profile(block_size=4).zero())
    c = Request("c", list(range(40)), max_tokens=2, arrival=0, remote_prefill={"remote_port": 1})
    s.add(c)
    s.step(0)
    assert s.kv_loaded("c", ok=True, upto=24) is c  # the producer held 6 of 10 blocks
    assert c.loaded_tokens == 24
    assert s.step(0).prefill_tokens == 16  # tokens 24..39 computed here


def test_reset_prefix_cache_is_refused_while_blocks_are_in_use() -> None:
    events: list[tuple] = []
    bm = BlockManager(num_blocks=8, block_size=4, on_event=events.append)
    tokens = list(range(8))
    a = bm.allocate(tokens, block_hashes(tokens, 4))
    assert a is not None
    bm.commit(a.block_ids, tokens, block_hashes(tokens, 4))
    assert bm.reset() is False and bm.content() and events[-1][0] == "stored"
    bm.release(a.block_ids)
    assert bm.reset() is True and not bm.content() and events[-1] == ("cleared",)


def test_a_span_of_the_context_is_its_slice_across_prompt_and_output() -> None:
    req = Request("r", list(range(10)), max_tokens=9, arrival=0, output=[50, 51, 52, 53])
    for start in range(15):
        for stop in range(start, 15):
            assert req.span(start, stop) == req.context()[start:stop], (start, stop)


def test_a_commit_given_only_the_new_blocks_tokens_announces_the_same_blocks() -> None:
    """The scheduler hands commit the tokens from the first new block on (`offset`)."""
    tokens = list(range(16))
    hashes = block_hashes(tokens, 4)
    announced = []
    for given, offset in ((tokens, 0), (tokens[8:], 8)):
        events: list[tuple] = []
        bm = BlockManager(num_blocks=8, block_size=4, on_event=events.append)
        a = bm.allocate(tokens, hashes)
        assert a is not None
        bm.commit(a.block_ids[:2], tokens[:8], hashes[:2])
        bm.commit(a.block_ids, given, hashes, 2, None, offset)
        announced.append(events[-1])
    assert announced[0] == announced[1] == ("stored", hashes[2:], hashes[1], tokens[8:], None)


def test_grow_short_of_free_blocks_takes_what_is_left_and_says_so() -> None:
    bm = BlockManager(num_blocks=3, block_size=4)
    table: list[int] = []
    assert bm.grow(table, 8) and table == [0, 1]
    assert bm.grow(table, 8) and table == [0, 1]  # already room: nothing taken
    assert not bm.grow(table, 20) and table == [0, 1, 2] and bm.num_free == 0
    assert not bm.grow(table, 24) and table == [0, 1, 2]
