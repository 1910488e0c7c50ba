"""Sim engine benchmarks: start-up, zero-cost request rate, KV pull throughput.

    .venv/bin/python bench/sim_engine.py [--requests 2000] [--concurrency 32]

Anchors measured in the same run: `python -c pass` for start-up, a bare aiohttp
handler for request rate, numpy memcpy of the same bytes for KV pulls.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from pdserve.engines.sim import side_channel
from pdserve.engines.sim.kv_arena import KVArena
from pdserve.engines.sim.nixl_transport import make_nixl
from pdserve.process import ManagedProcess, free_port

PDSERVE = [sys.executable, "-m", "pdserve"]


def _startup(tmp: Path, runs: int = 5) -> tuple[float, float]:
    times, anchor = [], []
    for i in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        anchor.append(time.perf_counter() - t)
        port = free_port()
        proc = ManagedProcess(
            f"start{i}", [*PDSERVE, "sim-engine", "--port", str(port)], tmp / f"start{i}.log"
        )
        t = time.perf_counter()
        proc.start()
        _poll_health(proc, port)
        times.append(time.perf_counter() - t)
        proc.stop()
    return statistics.median(times), statistics.median(anchor)


def _poll_health(proc: ManagedProcess, port: int, timeout: float = 30) -> None:
    """GET /health every 5 ms (wait_http backs off to 0.5 s, too coarse to time start-up)."""
    import http.client

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        proc.check_alive()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.005)
        finally:
            conn.close()
    raise TimeoutError(f"sim-engine on {port} not ready after {timeout:g}s")


async def _load(url: str, body: dict | None, n: int, conc: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                if body is None:
                    async with http.get(url) as r:
                        await r.read()
                else:
                    async with http.post(url, json=body) as r:
                        assert r.status == 200, await r.text()
                        await r.read()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return n / (time.perf_counter() - t)


def _bare_server(port: int) -> subprocess.Popen:
    code = (
        "from aiohttp import web\nimport uvloop\nuvloop.install()\n"
        "async def h(r):\n    await r.read()\n    return web.json_response({'ok': 1})\n"
        "app = web.Application(); app.router.add_post('/x', h)\n"
        "app.router.add_get('/health', h)\n"
        f"web.run_app(app, host='127.0.0.1', port={port}, print=None, access_log=None)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def _rate(tmp: Path, n: int, conc: int) -> tuple[float, float]:
    port, bare_port = free_port(), free_port()
    proc = ManagedProcess(
        "rate",
        [*PDSERVE, "sim-engine", "--port", str(port), "--zero-cost", "--served-model-name", "sim"],
        tmp / "rate.log",
    ).start()
    bare = _bare_server(bare_port)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", 30)
        from pdserve.process import wait_http

        wait_http(f"http://127.0.0.1:{bare_port}/health", 30)
        body = {"model": "sim", "prompt": "hello world " * 32, "max_tokens": 8, "ignore_eos": True}
        sim = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/completions", body, n, conc))
        anchor = asyncio.run(_load(f"http://127.0.0.1:{bare_port}/x", {"a": 1}, n, conc))
        return sim, anchor
    finally:
        proc.stop()
        bare.terminate()
        bare.wait()


async def _pull_rate(
    nixl: bool, nbytes: int, reps: int, read_only: bool = False
) -> tuple[float, float]:
    """Bytes/s of whole pulls (request, transfer, checksum, release), or of the READ alone,
    and of a numpy memcpy of the same bytes timed between them (same conditions)."""
    blocks = 16
    src = KVArena(blocks, nbytes // blocks)
    dst = KVArena(blocks, nbytes // blocks)
    for b in range(blocks):
        src.fill(b, b + 1)
    ids = list(range(blocks))
    lease = side_channel.Leased(ids, src.checksum(ids))
    server = side_channel.SideChannelServer(
        src, lambda rid: lease, lambda rid: None, make_nixl(src) if nixl else None
    )
    port = await server.start("127.0.0.1", 0)
    local = make_nixl(dst) if nixl else None
    if nixl and local is None:
        raise SystemExit("NIXL unavailable")
    await side_channel.pull("127.0.0.1", port, "r", ids, ids, dst, local, 30)  # warm-up

    async def poll_producer() -> None:  # the passive side must progress UCX notifications
        while server.nixl is not None:
            server.nixl.poll()
            await asyncio.sleep(0.0005)

    poller = asyncio.create_task(poll_producer())
    if read_only:
        assert local is not None and server.nixl is not None
        meta, descs = server.nixl.metadata(), server.nixl.descs(ids)
    times, copies = [], []
    for _ in range(reps):
        t = time.perf_counter()
        if read_only:
            await local.read(meta, descs, ids)
        else:
            res = await side_channel.pull("127.0.0.1", port, "r", ids, ids, dst, local, 30)
            assert res.nbytes == nbytes
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        np.copyto(dst.buf, src.buf)  # the anchor, interleaved: same cache and CPU conditions
        copies.append(time.perf_counter() - t)
    poller.cancel()
    await server.close()
    # Medians resist the shared machine's noise.
    return nbytes / statistics.median(times), nbytes / statistics.median(copies)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--mib", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("== start-up to /health (median of 5)", flush=True)
        up, anchor = _startup(tmp)
        print(
            f"sim-engine {up * 1000:.0f} ms; python -c pass {anchor * 1000:.0f} ms; "
            f"ratio {up / anchor:.1f}x; target <= 1000 ms: {'met' if up <= 1 else 'missed'}"
        )
        print(
            f"== zero-cost completions, {args.requests} requests, {args.concurrency} concurrent",
            flush=True,
        )
        sim, bare = _rate(tmp, args.requests, args.concurrency)
        print(
            f"sim-engine {sim:.0f} req/s; bare aiohttp handler {bare:.0f} req/s; "
            f"ratio {sim / bare:.2f}"
        )
    nbytes, reps = args.mib << 20, 20
    print(f"== KV pull of {args.mib} MiB (16 blocks), median of {reps}", flush=True)
    gb = 1e9
    for label, nixl, read_only in (
        ("NIXL READ alone", True, True),
        ("NIXL verified pull (request, READ, xxh3 check, release)", True, False),
        ("TCP verified pull", False, False),
    ):
        rate, mem = asyncio.run(_pull_rate(nixl, nbytes, reps, read_only))
        verdict = f"; target >= 50%: {'met' if rate >= mem / 2 else 'missed'}" if read_only else ""
        print(
            f"{label}: {rate / gb:.2f} GB/s; memcpy {mem / gb:.2f} GB/s; "
            f"{rate / mem:.0%} of memcpy{verdict}"
        )


if __name__ == "__main__":
    main()
