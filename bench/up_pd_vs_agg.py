"""Decode latency under prefill interference: P/D vs aggregated, real vLLM CPU engines.

Three topologies of the bundled example, each started with `pdserve up` and driven
through its gateway with the same mixed load, one after another in one run:
  pd     1 prefill + 1 decode engine, a core each (the example)
  agg1   one aggregated engine with both cores
  agg2   two aggregated engines, a core each, behind the same EPP
Load: `--streams` closed-loop chat streams (short prompt, fixed 32 output tokens) whose
TTFT and inter-token latency (ITL) are measured, while long prompts (~500 tokens, distinct
so the prefix cache cannot help, 1 output token) come from one closed loop, or open-loop at
`--long-rate` per second so that every topology prefills the same load. The P/D
claim: decode ITL is insulated from the long prefills. Prints p50/p99 per topology and the
ratios to `pd`.

usage: .venv/bin/python bench/up_pd_vs_agg.py [--seconds 60] [--streams 3] [--via direct]
                                              [--long-rate 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import cycle
from pathlib import Path

import httpx
import yaml

from pdserve.engines import model, vllm
from pdserve.process import ManagedProcess, free_port
from pdserve.wire import PREFILLER_HEADER

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pd-smollm2.yaml"
PDSERVE = [sys.executable, "-m", "pdserve"]
MODEL = "smollm2"
LONG_WORDS = 400  # ~500 tokens: a prefill of a few seconds on one CPU core
WORDS = [
    "river",
    "stone",
    "cloud",
    "amber",
    "lantern",
    "orbit",
    "meadow",
    "copper",
    "violet",
    "harbor",
    "quiet",
    "ember",
]


def manifest(tmp: Path, topology: str) -> Path:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    if topology != "pd":
        for doc in docs:
            if doc.get("kind") == "LLMInferenceService":
                doc["spec"].pop("prefill", None)
                doc["spec"]["replicas"] = 1 if topology == "agg1" else 2
    path = tmp / f"{topology}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Target = Callable[[], tuple[str, dict[str, str]]]  # -> (base URL, extra headers) per request


async def stream_once(
    client: httpx.AsyncClient, target: Target, ttft: list[float], itl: list[float]
) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 32,
        "ignore_eos": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
    }
    base, headers = target()
    start = time.perf_counter()
    last = None
    url = f"{base}/v1/chat/completions"
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not chunk.get("choices") or not chunk["choices"][0]["delta"].get("content"):
                continue
            now = time.perf_counter()
            if last is None:
                ttft.append(now - start)
            else:
                itl.append(now - last)
            last = now


async def long_once(
    client: httpx.AsyncClient, target: Target, rng: random.Random, latencies: list[float]
) -> None:
    text = " ".join(rng.choice(WORDS) for _ in range(LONG_WORDS))
    body = {"model": MODEL, "max_tokens": 1, "prompt": text}
    base, headers = target()
    start = time.perf_counter()
    resp = await client.post(f"{base}/v1/completions", json=body, headers=headers)
    resp.raise_for_status()
    latencies.append(time.perf_counter() - start)


async def drive(
    target: Target, seconds: float, streams: int, long_rate: float = 0.0
) -> dict[str, float]:
    """`long_rate` > 0: long prompts arrive open-loop at that rate, so every topology gets
    the same prefill load; 0: one closed loop, each topology as many as it can take."""
    ttft: list[float] = []
    itl: list[float] = []
    longs: list[float] = []
    deadline = time.monotonic() + seconds
    rng = random.Random(7)
    async with httpx.AsyncClient(timeout=600) as client:
        await stream_once(client, target, [], [])  # warm-up, not measured

        async def streamer() -> None:
            while time.monotonic() < deadline:
                await stream_once(client, target, ttft, itl)

        async def closed_loop() -> None:
            while time.monotonic() < deadline:
                await long_once(client, target, rng, longs)

        async def open_loop() -> None:
            arrivals, due = [], time.monotonic()
            while due < deadline:
                await asyncio.sleep(max(0.0, due - time.monotonic()))  # the arrival schedule
                arrivals.append(asyncio.create_task(long_once(client, target, rng, longs)))
                due += 1 / long_rate
            await asyncio.gather(*arrivals)

        prefills = open_loop() if long_rate > 0 else closed_loop()
        await asyncio.gather(prefills, *(streamer() for _ in range(streams)))
    return {
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p99": pct(ttft, 0.99),
        "itl_p50": pct(itl, 0.5),
        "itl_p99": pct(itl, 0.99),
        "itl_mean": statistics.fmean(itl) if itl else float("nan"),
        "streams_done": len(ttft),
        "long_prompts": len(longs),
        "long_p50": pct(longs, 0.5),
    }


def run(
    topology: str, tmp: Path, seconds: float, streams: int, long_rate: float = 0.0
) -> dict[str, float]:
    port = free_port()
    state = ["--state-dir", str(tmp / f"state-{topology}")]
    up = [*PDSERVE, "up", str(manifest(tmp, topology)), "--engine", "vllm", "--detach"]
    started = time.perf_counter()
    done = subprocess.run([*up, "--port", str(port), *state], capture_output=True, text=True)
    try:
        if done.returncode != 0:
            raise SystemExit(f"{topology}: pdserve up failed:\n{done.stderr}")
        ready = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}"
        result = asyncio.run(drive(lambda: (url, {}), seconds, streams, long_rate))
        result["up_s"] = ready
        return result
    finally:
        subprocess.run([*PDSERVE, "down", *state], capture_output=True)


def run_direct(
    topology: str, tmp: Path, seconds: float, streams: int, long_rate: float = 0.0
) -> dict[str, float]:
    """The same engines without Envoy and the EPP: the client does the EPP's job (sets the
    prefill header for P/D, round-robins two aggregated engines). Gateway overhead is ~1 ms,
    small next to CPU decode steps; use it when the router is unavailable."""
    model_dir = model.resolve("builtin://smollm2-135m-instruct")
    procs: list[ManagedProcess] = []

    def start(name: str, cores: str, pd: bool) -> int:
        port = free_port()
        cmd = vllm.command(
            model_dir, MODEL, port, pd=pd, side_channel_port=free_port(), cores=cores
        )
        proc = ManagedProcess(
            name, cmd.argv, tmp / f"{topology}-{name}.log", env={**os.environ, **cmd.env}
        ).start()
        procs.append(proc)
        return port

    started = time.perf_counter()
    try:
        if topology == "pd":
            prefill, decode = start("prefill", "0", True), start("decode", "1", True)
            side = free_port()
            argv = [
                *PDSERVE,
                "sidecar",
                "--host",
                "127.0.0.1",
                "--port",
                str(side),
                "--vllm-port",
                str(decode),
                "--secure-proxy=false",
            ]
            procs.append(ManagedProcess("sidecar", argv, tmp / "sidecar.log").start())
            ports = [prefill, decode]
            url, headers = f"http://127.0.0.1:{side}", {PREFILLER_HEADER: f"127.0.0.1:{prefill}"}
            target: Target = lambda: (url, headers)  # noqa: E731
        elif topology == "agg1":
            ports = [start("engine", "0-1", False)]
            target = lambda: (f"http://127.0.0.1:{ports[0]}", {})  # noqa: E731
        else:
            ports = [start("engine-0", "0", False), start("engine-1", "1", False)]
            turn = cycle(ports)
            target = lambda: (f"http://127.0.0.1:{next(turn)}", {})  # noqa: E731
        for proc, port in zip(procs, ports, strict=False):
            proc.wait_http(f"http://127.0.0.1:{port}/health", 900)
        if topology == "pd":
            procs[-1].wait_http(f"http://127.0.0.1:{side}/health", 60)
        ready = time.perf_counter() - started
        result = asyncio.run(drive(target, seconds, streams, long_rate))
        result["up_s"] = ready
        return result
    finally:
        for proc in procs:
            proc.stop(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--topologies", default="pd,agg1,agg2")
    ap.add_argument("--via", choices=("gateway", "direct"), default="gateway")
    ap.add_argument(
        "--long-rate",
        type=float,
        default=0.0,
        help="long prompts per second, open loop (default: one closed loop)",
    )
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for topology in args.topologies.split(","):
            runner = run if args.via == "gateway" else run_direct
            results[topology] = runner(
                topology, Path(tmp), args.seconds, args.streams, args.long_rate
            )
            r = results[topology]
            print(
                f"{topology:>5}: up {r['up_s']:.0f}s  TTFT p50 {r['ttft_p50'] * 1e3:.0f} ms "
                f"p99 {r['ttft_p99'] * 1e3:.0f} ms  ITL p50 {r['itl_p50'] * 1e3:.1f} ms "
                f"p99 {r['itl_p99'] * 1e3:.1f} ms  ({r['streams_done']} streams, "
                f"{r['long_prompts']} long prompts, p50 {r['long_p50'] * 1e3:.0f} ms)",
                flush=True,
            )
    if "pd" in results:
        base = results["pd"]
        for topology, r in results.items():
            if topology != "pd":
                print(
                    f"{topology} / pd: ITL p50 {r['itl_p50'] / base['itl_p50']:.2f}x, "
                    f"ITL p99 {r['itl_p99'] / base['itl_p99']:.2f}x, "
                    f"TTFT p50 {r['ttft_p50'] / base['ttft_p50']:.2f}x"
                )


if __name__ == "__main__":
    main()
