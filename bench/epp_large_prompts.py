"""The EPP's own time per decision with 220 KB prompts at 32 concurrent clients through Envoy.

    .venv/bin/python bench/epp_large_prompts.py [--requests 400] [--concurrency 32]
                                                [--kbytes 220] [--config FILE]
                                                [--body-mode FULL_DUPLEX_STREAMED|BUFFERED]

Why: upstream reports ~286 ms spent in its EPP per request with prompts this large at
c=1200 (llm-d-router issue #1109); the goal here is an EPP p50 under 5 ms at c=32.

Two zero-cost sim engines, one labelled decode and one prefill (so a P/D config such as
upstream's v0.10 pd-epp-config.yaml, given with --config and read where it lies, runs both
profiles); prompts share long prefixes with one of 16 "documents", so the prefix index walks
real chains. The EPP's own time is the `ms` field of its `decision` log lines (parse, admission,
scheduling, metrics: from the body complete to the answer built), cross-checked against its
inference_extension_scheduler_e2e_duration_seconds histogram on the metrics port. Beside it,
the EPP process's CPU time per request over its phases (/proc: utime + stime), which also
counts what the decision does not: the gRPC stream, gathering the body and sending it back.

Anchors, same run: the same bodies at the same concurrency straight to the engines (no proxy)
and through Envoy without ext_proc; and, in this process between the phases, json.loads plus
one xxhash64 of one body (the least any router must do with it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import xxhash

from envoy_stack import Fleet, add_body_mode, engines, epp, gateways, in_fleet
from pdserve.wire import DESTINATION_HEADER

# 220 KB of text is ~55k tokens by the engine's count; the engines must take it whole.
LONG = ("--max-model-len", "262144")
E2E = "inference_extension_scheduler_e2e_duration_seconds"


def bodies(kbytes: int, count: int, rng: random.Random) -> list[bytes]:
    """Completions over 16 shared documents: a long common prefix and a unique tail."""
    size = kbytes * 1000
    docs = ["".join(rng.choices("abcdefghij klmnop", k=size)) for _ in range(16)]
    out = []
    for i in range(count):
        tail = f" question {i} {rng.random()}"
        prompt = rng.choice(docs)[: size - len(tail)] + tail
        out.append(json.dumps({"model": "sim", "prompt": prompt, "max_tokens": 8}).encode())
    return out


async def drive(url: str, work: list[bytes], conc: int, dest: Iterator[str] | None) -> list[float]:
    """Every body once at `conc` concurrent clients; the per-request wall times."""
    times: list[float] = []
    todo = iter(work)
    hdr = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:

        async def worker() -> None:
            for body in todo:
                h = {**hdr, DESTINATION_HEADER: next(dest)} if dest else hdr
                t = time.perf_counter()
                async with http.post(f"{url}/v1/completions", data=body, headers=h) as r:
                    if r.status != 200:
                        raise RuntimeError(f"{url}: {r.status} {await r.text()}")
                    await r.read()
                times.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(conc)))
    return times


def decision_ms(log: Path, skip: int) -> list[float]:
    """The `ms` of the EPP's decision lines after the first `skip` (the warm-up's)."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"event":"decision"' in line:
            out.append(float(json.loads(line)["ms"]))
    return out[skip:]


def histogram(url: str) -> dict[float, float]:
    """The e2e histogram's cumulative bucket counts, upper bound -> count."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(f"{E2E}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_of_median(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the bucket holding the median of the observations in between."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts[float("inf")]
    return next(le for le, c in counts.items() if c >= total / 2)


def anchor_parse(body: bytes, n: int = 20) -> float:
    """Median seconds for json.loads + one xxhash64 of the prompt, in this process."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        xxhash.xxh64_intdigest(json.loads(body)["prompt"].encode())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(fleet: Fleet, args: argparse.Namespace) -> tuple[list[str], int, int, int, int]:
    """Engines, the EPP (decision log at info) and the two Envoys; their addresses and the
    EPP's pid."""
    dests = engines(fleet, LONG)
    extra = ["--log-level", "info"]
    if args.config:
        extra += ["--config-file", str(args.config)]
    proc, grpc, metrics = epp(fleet, f"{dests[0]}@decode,{dests[1]}@prefill", extra)
    gw_epp, gw_plain = gateways(fleet, grpc, args.body_mode)
    assert proc.pid is not None
    return dests, gw_epp, gw_plain, metrics, proc.pid


def run(fleet: Fleet, args: argparse.Namespace) -> None:
    dests, gw_epp, gw_plain, metrics, epp_pid = start(fleet, args)
    rng = random.Random(1109)
    work = bodies(args.kbytes, args.requests, rng)
    warm = work[: args.concurrency * 2]
    rr: Callable[[], Iterator[str]] = lambda: itertools.cycle(dests)  # noqa: E731
    paths = {
        "direct to the engines (anchor)": (None, True),
        "envoy, no ext_proc": (f"http://127.0.0.1:{gw_plain}", True),
        f"envoy + pdserve epp ({args.body_mode})": (f"http://127.0.0.1:{gw_epp}", False),
    }
    asyncio.run(drive(f"http://127.0.0.1:{gw_epp}", warm, args.concurrency, None))
    skip = len(warm)
    lat: dict[str, list[float]] = {k: [] for k in paths}
    parse_anchor: list[float] = []
    epp_cpu = 0.0
    before = histogram(f"http://127.0.0.1:{metrics}/metrics")
    for order in (list(paths), list(reversed(paths))):
        for name in order:
            url, routed_here = paths[name]
            if url is None:  # the client spreads the bodies over the engines itself
                lat[name] += asyncio.run(direct(dests, work, args.concurrency))
            else:
                cpu = cpu_seconds(epp_pid)
                lat[name] += asyncio.run(
                    drive(url, work, args.concurrency, rr() if routed_here else None)
                )
                if not routed_here:
                    epp_cpu += cpu_seconds(epp_pid) - cpu
            parse_anchor.append(anchor_parse(work[0]))
    after = histogram(f"http://127.0.0.1:{metrics}/metrics")
    cpu_ms = epp_cpu * 1e3 / (2 * len(work))
    report(args, lat, decision_ms(fleet.tmp / "epp.log", skip), parse_anchor, (before, after))
    print(f"EPP process CPU per request (stream, body, decision, log line): {cpu_ms:.2f} ms")
    epp_name = next(k for k, (_, here) in paths.items() if not here)
    added = pct(lat[epp_name], 0.5) - pct(lat["envoy, no ext_proc"], 0.5)
    print(f"request p50 added by the ext_proc hop (envoy + epp - envoy): {added * 1e3:.1f} ms")


async def direct(dests: list[str], work: list[bytes], conc: int) -> list[float]:
    """Half the bodies to each engine, as the client's own round robin would send them."""
    halves = [work[i :: len(dests)] for i in range(len(dests))]
    per = max(conc // len(dests), 1)
    runs = [drive(f"http://{d}", h, per, None) for d, h in zip(dests, halves, strict=True)]
    return [t for ts in await asyncio.gather(*runs) for t in ts]


def report(
    args: argparse.Namespace,
    lat: dict[str, list[float]],
    epp_ms: list[float],
    parse_anchor: list[float],
    hist: tuple[dict[float, float], dict[float, float]],
) -> None:
    print(
        f"== {args.kbytes} KB prompts, {args.requests} requests x 2 runs per path at "
        f"{args.concurrency} concurrent clients; config {args.config or 'default single profile'}"
    )
    for name, xs in lat.items():
        print(
            f"{name:44s} request p50 {pct(xs, 0.5) * 1e3:8.2f} ms"
            f"  p99 {pct(xs, 0.99) * 1e3:8.2f} ms"
        )
    p50, p99 = pct(epp_ms, 0.5), pct(epp_ms, 0.99)
    anchor = statistics.median(parse_anchor) * 1e3
    direct_p50 = pct(next(iter(lat.values())), 0.5) * 1e3
    print(
        f"EPP's own time per decision ({len(epp_ms)} decision lines): p50 {p50:.3f} ms, "
        f"p99 {p99:.3f} ms; histogram median bucket <= {bucket_of_median(*hist) * 1e3:g} ms"
    )
    print(
        f"anchors: json.loads + xxh64 of one body {anchor:.3f} ms (EPP p50 / it = "
        f"{p50 / anchor:.1f}); direct request p50 {direct_p50:.2f} ms (EPP p50 / it = "
        f"{p50 / direct_p50:.3f})"
    )
    print(f"target EPP p50 < 5 ms: {'met' if p50 < 5 else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--kbytes", type=int, default=220)
    ap.add_argument("--config", type=Path, help="an EndpointPickerConfig file (read in place)")
    add_body_mode(ap)
    in_fleet(run, ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
