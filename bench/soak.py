"""A soak under chaos: P/D with 2 prefill and 2 decode sim engines under `pdserve up`, a
steady load, and one random component killed (SIGKILL) every N seconds.

    .venv/bin/python bench/soak.py [--minutes 10] [--kill-every 30] [--rate 8] [--output F]

The client sends completions through the gateway, open loop, alternating long prompts (P/D)
and short ones (decode-only); a request that fails with a retriable error (5xx, 429, a
broken connection) is retried once. At the end it prints the totals, the hung requests (no
answer within the client's timeout), each prefill engine's KV leases and KV usage against
its baseline, and the RSS at start and end of every process that lived through the run.
Exit 1 when any of the issue's bounds is missed: a request failed after its retry, one hung,
a lease is left, KV is above baseline, or an RSS grew by more than 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pdserve import wire
from pdserve.process import free_port

PDSERVE = [sys.executable, "-m", "pdserve"]
ROOT = Path(__file__).resolve().parent.parent

VICTIMS = ("prefill-", "decode-", "sidecar-", "epp", "envoy")
MANIFEST = ROOT / "examples" / "pd-smollm2.yaml"
# A client's pause before its one retry: the time a killed component takes to be back
# (restart backoff 0.5 s here, then its start: Envoy's is about a second).
RETRY_AFTER = 2.0
LONG = "Disaggregated serving moves the prompt to its own engine. " * 40  # P/D
SHORT = "Say hi."  # decode-only


@dataclass
class Outcome:
    kind: str  # ok | retried_ok | failed | hung
    first: str  # the first attempt's status or error


def manifest(folder: Path) -> Path:
    """The example with 2 decode and 2 prefill replicas."""
    text = MANIFEST.read_text().replace("  replicas: 1\n", "  replicas: 2\n", 1)
    text = text.replace("    replicas: 1\n", "    replicas: 2\n", 1)
    out = folder / "soak.yaml"
    out.write_text(text)
    return out


def pdserve(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([*PDSERVE, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"pdserve {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def state(folder: Path) -> dict[str, Any]:
    return json.loads(pdserve("status", "--json", "--state-dir", str(folder)))


def rss_kb(pid: int | None) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def processes(st: dict[str, Any]) -> dict[str, int]:
    out = {"supervisor": int(st["pid"])}
    for row in st.get("components") or []:
        if row.get("pid"):
            out[row["name"]] = int(row["pid"])
    return out


async def one(http: httpx.AsyncClient, url: str, i: int, timeout: float) -> Outcome:
    body = {"model": "smollm2", "prompt": LONG if i % 2 else SHORT, "max_tokens": 16,
            "ignore_eos": True}  # fmt: skip
    first = ""
    for attempt in range(2):
        try:
            r = await http.post(url, json=body, timeout=timeout)
        except httpx.TimeoutException:
            return Outcome("hung", first or "timeout")
        except httpx.TransportError as err:
            status = type(err).__name__
        else:
            status = str(r.status_code)
            if r.status_code == 200:
                return Outcome("ok" if attempt == 0 else "retried_ok", first or status)
            if r.status_code < 500 and r.status_code != 429:
                return Outcome("failed", first or status)  # not retriable: a bug
        first = first or status
        await asyncio.sleep(RETRY_AFTER)
    return Outcome("failed", first)


async def load(url: str, rate: float, seconds: float, timeout: float) -> list[Outcome]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as http:
        tasks = []
        t0 = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, url, i, timeout)))
        return list(await asyncio.gather(*tasks))


Seen = dict[int, tuple[str, int, float]]  # pid -> (component, first RSS KiB, when)


def note_rss(st: dict[str, Any], seen: Seen) -> None:
    """Each process's RSS when first seen: a restarted component is a new process."""
    for name, pid in processes(st).items():
        if pid not in seen and (kb := rss_kb(pid)) is not None:
            seen[pid] = (name, kb, time.monotonic())


async def chaos(folder: Path, every: float, seconds: float, log: list[str], seen: Seen) -> None:
    rng = random.Random(7)
    turn = rng.randrange(len(VICTIMS))
    t0 = time.monotonic()
    while time.monotonic() - t0 + every < seconds:
        await asyncio.sleep(every)
        st = state(folder)
        note_rss(st, seen)
        rows = [r for r in st["components"] if r.get("pid") and r["status"] == "ready"]
        # Kinds take turns (every one is hit, Envoy included), the replica at random.
        kind = VICTIMS[turn % len(VICTIMS)]
        turn += 1
        victims = [r for r in rows if r["name"].startswith(kind)]
        if not victims:
            continue
        victim = rng.choice(victims)
        try:
            os.kill(int(victim["pid"]), signal.SIGKILL)
        except ProcessLookupError:
            continue
        log.append(f"{time.monotonic() - t0:6.1f}s killed {victim['name']} (pid {victim['pid']})")
        print(f"soak: {log[-1]}", file=sys.stderr, flush=True)


def engine_gauges(st: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Each prefill engine's (KV leases, KV usage)."""
    out = {}
    for row in st["components"]:
        if row["name"].startswith("prefill-") and row.get("port"):
            text = httpx.get(f"http://127.0.0.1:{row['port']}/metrics", timeout=5).text
            leases = usage = 0.0
            for line in text.splitlines():
                if line.startswith("pdserve_sim:kv_leases"):
                    leases = float(line.rsplit(" ", 1)[1])
                elif line.startswith(wire.METRIC_KV_USAGE + "{"):
                    usage = float(line.rsplit(" ", 1)[1])
            out[row["name"]] = (leases, usage)
    return out


def settled(folder: Path, deadline: float) -> dict[str, Any]:
    """The service with every component running again (after the last kill)."""
    while True:
        st = state(folder)
        if all(r["status"] == "ready" for r in st["components"]):
            return st
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: components not back: {st['components']}")
        time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--kill-every", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=8.0, help="requests/s, half of them P/D")
    ap.add_argument("--timeout", type=float, default=30.0, help="a request without an answer")
    ap.add_argument("--output", help="JSON of the figures")
    args = ap.parse_args()
    seconds = args.minutes * 60
    folder = Path(tempfile.mkdtemp(prefix="pdserve-soak-"))
    port = free_port()
    # Twenty kills in ten minutes land on five kinds of component: let each come back.
    env = {**os.environ, "PDSERVE_RESTART_LIMIT": "100", "PDSERVE_RESTART_BACKOFF": "0.5"}
    pdserve("up", str(manifest(folder)), "--engine", "sim", "--detach", "--port", str(port),
            "--state-dir", str(folder / "state"), env=env)  # fmt: skip
    state_dir = folder / "state"
    try:
        start = settled(state_dir, time.monotonic() + 60)
        baseline = engine_gauges(start)
        seen: Seen = {}
        note_rss(start, seen)
        url = f"http://127.0.0.1:{port}/v1/completions"
        kills: list[str] = []

        async def run() -> list[Outcome]:
            killer = asyncio.create_task(chaos(state_dir, args.kill_every, seconds, kills, seen))
            outcomes = await load(url, args.rate, seconds, args.timeout)
            await killer
            return outcomes

        outcomes = asyncio.run(run())
        end = settled(state_dir, time.monotonic() + 60)
        deadline = time.monotonic() + 15
        while (gauges := engine_gauges(end)) and any(v[0] for v in gauges.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # Processes alive at the end that ran at least two kill intervals: their growth is
        # the leak figure (one just restarted is still warming up).
        now, rss = time.monotonic(), {}
        for pid, (name, first, since) in seen.items():
            last = rss_kb(pid)
            if last is not None and now - since >= 2 * args.kill_every:
                rss[f"{name} (pid {pid}, {(now - since) / 60:.1f} min)"] = (first, last)
    finally:
        subprocess.run([*PDSERVE, "down", "--state-dir", str(state_dir)], check=False,
                       capture_output=True)  # fmt: skip
    return report(args, outcomes, kills, baseline, gauges, rss)


def report(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    kills: list[str],
    baseline: dict[str, tuple[float, float]],
    gauges: dict[str, tuple[float, float]],
    rss: dict[str, tuple[int | None, int | None]],
) -> int:
    kinds = Counter(o.kind for o in outcomes)
    firsts = Counter(o.first for o in outcomes if o.kind != "ok")
    print(f"soak: {args.minutes:g} min, a kill every {args.kill_every:g} s, {args.rate:g} req/s")
    print(f"requests {len(outcomes)}: {dict(kinds)}; first errors of the retried: {dict(firsts)}")
    print(f"kills ({len(kills)}):")
    for line in kills:
        print(f"  {line}")
    problems = []
    for name, (leases, usage) in gauges.items():
        base = baseline.get(name, (0.0, 0.0))[1]
        print(f"{name}: leases {leases:g}, KV usage {usage:.4f} (baseline {base:.4f})")
        if leases:
            problems.append(f"{name} holds {leases:g} leases")
        if usage > base + 1e-9:
            problems.append(f"{name} KV above baseline")
    print("RSS (KiB) of the processes that lived through the run:")
    for name, (a, b) in sorted(rss.items()):
        growth = (b / a - 1) * 100 if a and b else float("nan")
        print(f"  {name:12} {a} -> {b} ({growth:+.1f}%)")
        if a and b and b > a * 1.10:
            problems.append(f"{name} RSS grew {growth:.0f}%")
    if kinds["failed"]:
        problems.append(f"{kinds['failed']} requests failed after a retry")
    if kinds["hung"]:
        problems.append(f"{kinds['hung']} requests hung")
    if args.output:
        Path(args.output).write_text(json.dumps({
            "requests": len(outcomes), "outcomes": dict(kinds), "first_errors": dict(firsts),
            "kills": kills, "engines": gauges, "rss_kib": rss, "problems": problems,
        }, indent=2) + "\n")  # fmt: skip
    for p in problems:
        print(f"MISSED: {p}")
    print("all bounds held" if not problems else f"{len(problems)} bounds missed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
