"""Sidecar benchmark: the P/D path through `pdserve sidecar` vs the Rust vllm-router.

    .venv/bin/python bench/sidecar.py [--requests 2000] [--concurrency 32]
        [--prefill-max-retries 3] [--no-router]

Both proxies drive the same two zero-cost sim engines (one prefill, one decode) in the same
run. The anchor is the client doing the two legs itself (no proxy): the difference is the
latency each proxy adds. With --prefill-max-retries N a second sidecar runs with retries on
beside the one without, so what the retry path costs a request that needs none is the
difference of their added latencies, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from pdserve.process import ManagedProcess, free_port
from pdserve.wire import PREFILLER_HEADER, prefill_kv_transfer_params

PDSERVE = [sys.executable, "-m", "pdserve"]
KV = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
BODY = {
    "model": "sim",
    "prompt": "benchmark the routing sidecar " * 16,
    "max_tokens": 8,
    "ignore_eos": True,
}


def start(tmp: Path, name: str, argv: list[str], health: str) -> ManagedProcess:
    proc = ManagedProcess(name, argv, tmp / f"{name}.log").start()
    proc.wait_http(health, timeout=60)
    return proc


async def direct(http: aiohttp.ClientSession, prefill: str, decode: str) -> None:
    leg = {**BODY, "max_tokens": 1, "kv_transfer_params": prefill_kv_transfer_params()}
    async with http.post(f"{prefill}/v1/completions", json=leg) as r:
        kv = (await r.json())["kv_transfer_params"]
    async with http.post(f"{decode}/v1/completions", json={**BODY, "kv_transfer_params": kv}) as r:
        assert r.status == 200
        await r.read()


async def via(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    async with http.post(f"{url}/v1/completions", json=BODY, headers=headers) as r:
        assert r.status == 200, await r.text()
        await r.read()


async def measure(call, n_seq: int, n_load: int, conc: int) -> tuple[float, float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:
        for _ in range(20):
            await call(http)
        lat = []
        for _ in range(n_seq):
            t = time.perf_counter()
            await call(http)
            lat.append(time.perf_counter() - t)
        lat.sort()
        todo = iter(range(n_load))

        async def worker() -> None:
            for _ in todo:
                await call(http)

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        rps = n_load / (time.perf_counter() - t)
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], rps


async def interleaved(calls: list, n_seq: int) -> list[tuple[float, float]]:
    """p50 and p99 of each call, the calls taking turns request by request, so a change in
    the machine's load between them cannot pass for a difference of the paths."""
    async with aiohttp.ClientSession() as http:
        for call in calls:
            for _ in range(20):
                await call(http)
        lat: list[list[float]] = [[] for _ in calls]
        for _ in range(n_seq):
            for i, call in enumerate(calls):
                t = time.perf_counter()
                await call(http)
                lat[i].append(time.perf_counter() - t)
    out = []
    for values in lat:
        values.sort()
        out.append((values[len(values) // 2], values[int(len(values) * 0.99)]))
    return out


def sidecar(tmp: Path, name: str, port: int, decode_port: int, retries: int) -> ManagedProcess:
    argv = [*PDSERVE, "sidecar", "--port", str(port), "--model-server-port", str(decode_port)]
    argv += ["--secure-proxy=false", "--log-level", "warning"]
    argv += ["--prefill-max-retries", str(retries)]
    return start(tmp, name, argv, f"http://127.0.0.1:{port}/health")


def report(rows: list[tuple[str, tuple[float, float, float]]]) -> None:
    for name, (p50, p99, rps) in rows:
        print(f"{name:32s} p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  {rps:7.0f} req/s")


def router_argv(url: dict[str, str], ports: dict[str, int]) -> list[str]:
    router = str(Path(sys.executable).parent / "vllm-router")
    argv = [router, "--host", "127.0.0.1", "--port", str(ports["router"])]
    argv += ["--vllm-pd-disaggregation", "--prefill", url["p"], "none", "--decode", url["d"]]
    return [*argv, "--policy", "round_robin", "--prometheus-port", str(ports["prom"])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--sequential", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--prefill-max-retries", type=int, default=0, help="also bench retries on")
    ap.add_argument("--no-router", action="store_true", help="skip vllm-router")
    args = ap.parse_args()
    procs: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        try:
            names = ("p", "d", "sidecar", "retrying", "router", "prom")
            ports = {k: free_port() for k in names}
            url = {k: f"http://127.0.0.1:{v}" for k, v in ports.items()}
            for k in ("p", "d"):
                procs.append(
                    start(
                        tmp,
                        k,
                        [
                            *PDSERVE,
                            "sim-engine",
                            "--port",
                            str(ports[k]),
                            "--served-model-name",
                            "sim",
                            "--zero-cost",
                            "--kv-transfer-config",
                            KV,
                        ],
                        f"{url[k]}/health",
                    )
                )
            procs.append(sidecar(tmp, "sidecar", ports["sidecar"], ports["d"], 0))
            if args.prefill_max_retries:
                retrying = (
                    tmp,
                    "retrying",
                    ports["retrying"],
                    ports["d"],
                    args.prefill_max_retries,
                )
                procs.append(sidecar(*retrying))
            if not args.no_router:
                procs.append(
                    start(tmp, "router", router_argv(url, ports), f"{url['router']}/health")
                )
            n = (args.sequential, args.requests, args.concurrency)
            print(
                f"== P/D completions (8 tokens), {args.sequential} sequential for latency, "
                f"{args.requests} at {args.concurrency} concurrent for throughput",
                flush=True,
            )
            base = asyncio.run(measure(lambda h: direct(h, url["p"], url["d"]), *n))
            target = {PREFILLER_HEADER: f"127.0.0.1:{ports['p']}"}
            side = asyncio.run(measure(lambda h: via(h, url["sidecar"], target), *n))
            rows = [("client does both legs (anchor)", base), ("pdserve sidecar", side)]
            if args.prefill_max_retries:
                again = asyncio.run(measure(lambda h: via(h, url["retrying"], target), *n))
                rows.append((f"sidecar, {args.prefill_max_retries} retries", again))
            if not args.no_router:
                rout = asyncio.run(measure(lambda h: via(h, url["router"], {}), *n))
                rows.append(("vllm-router", rout))
            report(rows)
            add_s = side[0] - base[0]
            print(f"added p50: sidecar {add_s * 1e3:.2f} ms")
            if args.prefill_max_retries:
                add_r = again[0] - base[0]
                print(
                    f"added p50 with retries on: {add_r * 1e3:.2f} ms, "
                    f"{(add_r - add_s) * 1e3:+.2f} ms against retries off (goal <= +0.1)"
                )
                calls = [
                    lambda h: direct(h, url["p"], url["d"]),
                    lambda h: via(h, url["sidecar"], target),
                    lambda h: via(h, url["retrying"], target),
                ]
                (b50, b99), (s50, s99), (r50, r99) = asyncio.run(
                    interleaved(calls, args.sequential)
                )
                print(
                    f"interleaved, {args.sequential} each: anchor p50 {b50 * 1e3:.2f} ms "
                    f"p99 {b99 * 1e3:.2f}; sidecar {s50 * 1e3:.2f} / {s99 * 1e3:.2f}; "
                    f"retries on {r50 * 1e3:.2f} / {r99 * 1e3:.2f}; added p50: sidecar "
                    f"{(s50 - b50) * 1e3:.2f} ms, retries on {(r50 - b50) * 1e3:.2f} ms "
                    f"({(r50 - s50) * 1e3:+.2f} ms; goal <= +0.1)"
                )
            if not args.no_router:
                add_v = rout[0] - base[0]
                print(
                    f"added p50: vllm-router {add_v * 1e3:.2f} ms "
                    f"(ratio {add_s / add_v if add_v > 0 else float('inf'):.2f}; goal <= 1)"
                )
                print(f"throughput: sidecar / vllm-router = {side[2] / rout[2]:.2f} (goal >= 0.70)")
        finally:
            for p in reversed(procs):
                p.stop()


if __name__ == "__main__":
    main()
