"""`pdserve bench` load generation speed: the open loop at --rate against a zero-cost engine.

    .venv/bin/python bench/bench_client_speed.py [--rate 500] [--duration 20]

One `pdserve sim-engine --zero-cost` serves a tiny workload (completions, 8 prompt and 8
output tokens, Poisson at --rate), sent by bench's own open loop (`client.open_loop`, the
code `pdserve bench` runs) in this process, under bench's event loop (uvloop where
installed). Measured: the requests/s achieved and this process's CPU seconds per wall
second (getrusage), i.e. the cores the client itself used. Target: >= 500 req/s with the
client under one core. Anchor, same run: the engine's own zero-cost rate when driven by a
trivial aiohttp closed loop (32 concurrent, the same body).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from pdserve.bench.cli import _loop_factory
from pdserve.bench.client import Counters, Result, Target, open_loop
from pdserve.bench.generator import requests
from pdserve.bench.workload import parse
from pdserve.process import ManagedProcess, free_port

WORKLOAD = {
    "api": "completions",
    "arrival": {"process": "poisson", "rate": 500},
    "input_tokens": {"dist": "fixed", "value": 8},
    "output_tokens": {"dist": "fixed", "value": 8},
}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _anchor(url: str, n: int, conc: int = 32) -> float:
    body = {"model": "sim", "prompt": "hello world " * 4, "max_tokens": 8, "ignore_eos": True}
    body["stream"] = True
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                async with http.post(url + "/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return n / (time.perf_counter() - t)


async def _bench(url: str, rate: float, duration: float) -> tuple[list[Result], float, float]:
    workload = parse({**WORKLOAD, "arrival": {"process": "poisson", "rate": rate}})
    plan = requests(workload, 0, duration)
    results: list[Result] = []
    t0, cpu0 = time.perf_counter(), _cpu()
    await open_loop(Target(url, "sim"), plan, Counters(), results.append)
    return results, time.perf_counter() - t0, _cpu() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--anchor-requests", type=int, default=3000)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pdserve", "sim-engine", "--port", str(port)]
        cmd += ["--zero-cost", "--served-model-name", "sim", "--log-level", "warning"]
        proc = ManagedProcess("engine", cmd, Path(tmp) / "engine.log").start()
        try:
            proc.wait_http(url + "/health", 30)
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                anchor = runner.run(_anchor(url, args.anchor_requests))
                results, wall, cpu = runner.run(_bench(url, args.rate, args.duration))
        finally:
            proc.stop()
    ok = [r for r in results if r.error is None]
    errors = len(results) - len(ok)
    achieved = len(ok) / wall
    tokens = sum(r.output_tokens for r in ok)
    print(f"open loop at --rate {args.rate:g} for {args.duration:g} s (tiny completions)")
    print(
        f"  sent {len(results)}, ok {len(ok)}, errors {errors}, {tokens} tokens; "
        f"{achieved:,.0f} req/s achieved over {wall:.1f} s wall"
    )
    print(f"  client CPU {cpu:.1f} s / {wall:.1f} s wall = {cpu / wall:.2f} cores")
    print(f"  client CPU per request {cpu / max(1, len(results)) * 1e6:,.0f} us")
    print(
        f"anchor: the engine alone under a trivial aiohttp client, {anchor:,.0f} req/s "
        f"(achieved/anchor {achieved / anchor:.2f})"
    )


if __name__ == "__main__":
    main()
