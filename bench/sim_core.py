"""The sim engine's timing/cache core in virtual time: how large a fleet one process simulates.

    .venv/bin/python bench/sim_core.py [--engines 16] [--requests 20000] [--rate 200]

Drives one `Scheduler` per simulated engine (default profile: real modelled costs) with a
Poisson stream of requests sharing a few long system prompts, advancing each engine's clock
by the step durations the core returns. Reports wall-clock throughput of the simulation and
the simulated fleet's own figures. Anchor, same run: the bare per-token work (hashing one
output token per generated token) for the same token count.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import time

from pdserve.engines.sim.block_manager import BlockManager
from pdserve.engines.sim.profile import Profile
from pdserve.engines.sim.scheduler import Request, Scheduler
from pdserve.engines.sim.tokens import Generator
from pdserve.tokenization import BuiltinTokenizer


def _workload(n: int, rate: float, seed: int = 1) -> list[Request]:
    rng = random.Random(seed)
    systems = [
        [rng.randrange(1000, 51000) for _ in range(rng.randint(200, 1500))] for _ in range(8)
    ]
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        prompt = rng.choice(systems) + [
            rng.randrange(1000, 51000) for _ in range(rng.randint(20, 400))
        ]
        out.append(Request(f"r{i}", prompt, rng.randint(20, 300), t, ignore_eos=True))
    return out


def simulate(engines: int, reqs: list[Request], profile: Profile) -> tuple[float, int]:
    """Round-robin the requests over `engines` schedulers; returns (simulated end, steps)."""
    gen = Generator(BuiltinTokenizer())
    scheds = [
        Scheduler(profile, gen, BlockManager(profile.num_blocks, profile.block_size))
        for _ in range(engines)
    ]
    queues: list[list[Request]] = [[] for _ in range(engines)]
    for i, req in enumerate(reqs):
        queues[i % engines].append(req)
    clocks = [0.0] * engines
    nxt = [0] * engines
    heap = [(q[0].arrival, e) for e, q in enumerate(queues) if q]
    heapq.heapify(heap)
    steps = 0
    while heap:
        now, e = heapq.heappop(heap)
        s, q = scheds[e], queues[e]
        while nxt[e] < len(q) and q[nxt[e]].arrival <= now:
            s.add(q[nxt[e]])
            nxt[e] += 1
        if s.has_work:
            now += s.step(now).duration
            steps += 1
        elif nxt[e] < len(q):
            now = q[nxt[e]].arrival
        else:
            continue
        clocks[e] = now
        heapq.heappush(heap, (now, e))
    return max(clocks), steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=200.0, help="fleet arrivals per second")
    args = ap.parse_args()
    reqs = _workload(args.requests, args.rate)
    t = time.perf_counter()
    end, steps = simulate(args.engines, reqs, Profile())
    wall = time.perf_counter() - t
    assert all(r.done for r in reqs)
    tokens = sum(len(r.output) for r in reqs)
    ttft = [r.first_token_at - r.arrival for r in reqs if r.first_token_at is not None]
    cached = sum(r.cached_tokens for r in reqs) / sum(len(r.prompt) for r in reqs)

    gen = Generator(BuiltinTokenizer())
    t = time.perf_counter()
    for i in range(tokens):
        gen.token(i & 0xFFFF, i)
    anchor = time.perf_counter() - t

    print(f"== {args.requests} requests at {args.rate:g}/s over {args.engines} engines")
    print(
        f"simulated {end:.1f} s of fleet time in {wall:.2f} s wall ({end / wall:.1f}x real time); "
        f"{args.requests / wall:.0f} requests/s, {tokens / wall:.0f} tokens/s, {steps / wall:.0f} "
        f"engine steps/s"
    )
    print(
        f"fleet: TTFT p50 {statistics.median(ttft) * 1000:.0f} ms, "
        f"p99 {statistics.quantiles(ttft, n=100)[98] * 1000:.0f} ms; prefix-cache hit "
        f"{cached:.0%}; {tokens} output tokens"
    )
    print(
        f"anchor: bare per-token hashing {tokens / anchor:.0f} tokens/s; core/anchor "
        f"{(tokens / wall) / (tokens / anchor):.2f}"
    )


if __name__ == "__main__":
    main()
