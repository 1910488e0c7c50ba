"""The ext_proc hop through a real Envoy: EPP routing vs Envoy alone vs the Rust vllm-router.

    .venv/bin/python bench/epp_envoy.py [--sequential 300] [--requests 2000] [--concurrency 32]
                                        [--body-mode FULL_DUPLEX_STREAMED|BUFFERED]

Same run, same two zero-cost sim engines (aggregated, 8-token completions):
- anchor: the client round-robins the engines itself (no proxy);
- envoy: Envoy without ext_proc, the client sets x-gateway-destination-endpoint round-robin
  (ORIGINAL_DST routing only);
- envoy + epp: Envoy asking `pdserve epp` (default single profile: prefix + load scorers);
- vllm-router: `--policy round_robin --worker-urls` over the same engines.
Latency comes from sequential requests with the four paths interleaved request by request
(so load on the shared machine hits them alike); throughput from N requests at C concurrent
clients, each path twice (forward then reverse order), mean of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from envoy_stack import Fleet, add_body_mode, engines, epp, gateways, in_fleet
from pdserve.epp import envoy
from pdserve.process import free_port
from pdserve.wire import DESTINATION_HEADER

BODY = {"model": "sim", "prompt": "benchmark the gateway hop " * 16, "max_tokens": 8}
Call = Callable[[aiohttp.ClientSession], Awaitable[None]]


def poster(url: str, headers: Callable[[], dict[str, str]]) -> Call:
    async def call(http: aiohttp.ClientSession) -> None:
        async with http.post(f"{url}/v1/completions", json=BODY, headers=headers()) as r:
            if r.status != 200:
                raise RuntimeError(f"{url}: {r.status} {await r.text()}")
            await r.read()

    return call


async def latency(paths: dict[str, Call], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in paths}
    async with aiohttp.ClientSession() as http:
        for call in paths.values():
            for _ in range(20):
                await call(http)
        for _ in range(n):
            for name, call in paths.items():
                t = time.perf_counter()
                await call(http)
                out[name].append(time.perf_counter() - t)
    return {k: sorted(v) for k, v in out.items()}


async def throughput(call: Call, n: int, conc: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                await call(http)

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    add_body_mode(ap)
    in_fleet(run, ap.parse_args())


def run(fleet: Fleet, args: argparse.Namespace) -> None:
    dests = engines(fleet)
    _, grpc, _ = epp(fleet, ",".join(dests), ("--log-level", "warning"))
    gw_epp, gw_plain = gateways(fleet, grpc, args.body_mode)
    gw_watch = free_port()
    fleet.envoy(
        "envoy-watch", gw_watch, envoy.bootstrap(gw_watch, grpc, free_port(), [], args.body_mode)
    )
    router, prom = free_port(), free_port()
    fleet.start(
        "router",
        [
            str(Path(sys.executable).parent / "vllm-router"),
            "--host",
            "127.0.0.1",
            "--port",
            str(router),
            "--policy",
            "round_robin",
            "--prometheus-port",
            str(prom),
            "--log-level",
            "warning",
            "--worker-urls",
            *(f"http://{d}" for d in dests),
        ],
        f"http://127.0.0.1:{router}/health",
    )
    rr = itertools.cycle(dests)
    rr_direct = itertools.cycle(dests)
    paths: dict[str, Call] = {
        "direct (anchor)": lambda h: poster(f"http://{next(rr_direct)}", dict)(h),
        "envoy, no ext_proc": poster(
            f"http://127.0.0.1:{gw_plain}", lambda: {DESTINATION_HEADER: next(rr)}
        ),
        f"envoy + pdserve epp ({args.body_mode})": poster(f"http://127.0.0.1:{gw_epp}", dict),
        "vllm-router round_robin": poster(f"http://127.0.0.1:{router}", dict),
        "envoy + pdserve epp + watching filter": poster(f"http://127.0.0.1:{gw_watch}", dict),
    }
    print(
        f"== completions (8 tokens) over 2 zero-cost sim engines: {args.sequential} sequential "
        f"per path (interleaved) for latency, {args.requests} at {args.concurrency} concurrent "
        "for throughput",
        flush=True,
    )
    lat = asyncio.run(latency(paths, args.sequential))
    rps: dict[str, list[float]] = {k: [] for k in paths}
    for order in (list(paths), list(reversed(paths))):
        for name in order:
            rps[name].append(asyncio.run(throughput(paths[name], args.requests, args.concurrency)))
    p50 = {k: v[len(v) // 2] for k, v in lat.items()}
    for name in paths:
        v = lat[name]
        mean_rps = sum(rps[name]) / len(rps[name])
        print(
            f"{name:40s} p50 {p50[name] * 1e3:6.2f} ms  p99 {v[int(len(v) * 0.99)] * 1e3:6.2f} ms"
            f"  {mean_rps:7.0f} req/s  (runs: {', '.join(f'{x:.0f}' for x in rps[name])})"
        )
    names = list(paths)
    base, plain, epp_name, vr, watched = (p50[n] for n in names)
    mean = {k: sum(v) / len(v) for k, v in rps.items()}
    added_epp, added_vr, added_plain = epp_name - base, vr - base, plain - base
    print(
        f"added p50 over direct: envoy alone {added_plain * 1e3:.2f} ms, envoy + epp "
        f"{added_epp * 1e3:.2f} ms (ext_proc hop {(epp_name - plain) * 1e3:.2f} ms), "
        f"vllm-router {added_vr * 1e3:.2f} ms"
    )
    ratio = added_epp / added_vr if added_vr > 0 else float("inf")
    print(f"added p50 envoy+epp / vllm-router = {ratio:.2f} (goal <= 1.5)")
    print(
        f"throughput envoy+epp / vllm-router = {mean[names[2]] / mean[names[3]]:.2f} "
        f"(goal >= 0.5); envoy+epp / envoy alone = {mean[names[2]] / mean[names[1]]:.2f}"
    )
    print(
        f"the watching filter (as `pdserve up` and gateway-config deploy it): p50 "
        f"{(watched - epp_name) * 1e3:+.2f} ms, throughput x{mean[names[4]] / mean[names[2]]:.2f} "
        "against the routing filter alone"
    )


if __name__ == "__main__":
    main()
