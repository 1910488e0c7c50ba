"""Does `pdserve simulate` predict real vLLM? Profile the CPU engines, then measure and
simulate the P/D-versus-aggregated experiment (bench/up_pd_vs_agg.py's three layouts).

The experiment's load is written as one replay trace, so the service under `pdserve bench`
and the simulation get the very same requests: chat questions (a short, repeated prompt,
32 output tokens, Poisson at `--chat-rate`) and long distinct prompts (`--long-words`
words, 1 output token, every `1/--long-rate` s), as run C of docs/benchmarks.md, open loop.
The EPP's pd-profile-handler sends the long prompts through P/D and keeps the chats
decode-only, in the service and in the simulation alike (the same EPP core and config).
The trace labels its rows `chat` and `long`, so both reports break their figures down by
class (the report's `classes`): the experiment's TTFT is the chats' (the P/D experiment of
docs/benchmarks.md measures the TTFT and ITL of the chat streams, the long prompts being
the interference load), and the long prompts' TTFT p50 and the all-requests figures (one
bimodal mix of both) stay printed beside it.

Per layout, in this order:
  agg2  two aggregated engines, a core each: `pdserve profile` of one engine -> the 1-core
        profile (prefill cost, decode step against batch, KV read, capacity), then bench;
  agg1  one engine with both cores: its own profile (2 cores) taken through the gateway,
        then bench;
  pd    1 prefill + 1 decode, a core each: a profile of each engine as it runs (with its
        KV connector; the prefill one goes to simulate's --prefill-profile), the KV pull
        cost, then bench. The pull is what a
        P/D first token costs beyond the prefill engine's own: TTFT through the gateway
        minus the prefill engine's TTFT for a prompt of the same length (distinct texts,
        so neither hits the cache), minus one decode step; fitted at two lengths.
Where a layout has two engines, each is profiled while the other serves its share of the
trace (agg2: every other chat and long prompt; P/D: the prefill engine the long prompts,
the decode engine the chats), replayed straight at it round after round: the two engines
share the machine's cores, caches and memory bandwidth, and an engine profiled beside an
idle one measured steps 45% shorter than it then ran under the trace (run 5 of
docs/benchmarks.md). `--profile-alone` profiles each engine with the other idle, as before.
agg1's one engine has no neighbour to load; its profile goes through Envoy and the EPP, so
its requests pay the path the trace's do (3-6 ms a TTFT, measured in stop 19; profiled
straight at the engine, agg1 was predicted 4-26% fast in every run of stop 18).
`--runs N` measures and simulates the three layouts N times over the same trace (the
measurement moves 20-50% between runs here) and compares the medians too.
The host's steal time (the hypervisor's share of the cores) is printed for each profile
and bench: on a shared VM it moves from minute to minute, and with it every figure.
Then `pdserve simulate` of each layout's manifest with its profile and the same trace.
Prints measured against simulated chat TTFT p50/p90, long-prompt TTFT p50, and TTFT and
ITL p50/p90 over all requests, the error of each, and whether the simulation ranks the
three layouts as the measurement does by chat TTFT p50, all-requests TTFT p50 and ITL p50.

usage: .venv/bin/python bench/vllm_agreement.py [--seconds 60] [--chat-rate 1.2]
           [--long-rate 0.5] [--long-words 400] [--layouts agg2,agg1,pd] [--keep DIR]
           [--profile-alone] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import yaml

from pdserve.bench.client import Counters, Result, Target, open_loop
from pdserve.bench.generator import PlannedRequest
from pdserve.process import free_port
from up_pd_vs_agg import MODEL, PDSERVE, WORDS, manifest

CHAT = "Tell me about the sea."
CORES = {"agg2": "1core", "agg1": "2core", "pd": "pd"}
Figures = dict[str, float]
# The printed table's columns: (figure, heading, format of a value in ms).
COLUMNS = (
    ("chat_ttft_p50", "chat TTFT p50", ".0f"),
    ("chat_ttft_p90", "chat TTFT p90", ".0f"),
    ("long_ttft_p50", "long TTFT p50", ".0f"),
    ("ttft_p50", "TTFT p50", ".0f"),
    ("ttft_p90", "TTFT p90", ".0f"),
    ("itl_p50", "ITL p50", ".1f"),
    ("itl_p90", "ITL p90", ".1f"),
)
ORDERS = ("chat_ttft_p50", "ttft_p50", "itl_p50")
Row = dict[str, object]  # a trace row: timestamp, text, output_tokens, label
ByLayout = dict[str, Figures]  # one run's figures, by layout


def write_trace(folder: Path, a: argparse.Namespace) -> tuple[Path, list[Row]]:
    """The experiment's requests as a replay trace: the workload that replays it, and its
    rows."""
    rng = random.Random(a.seed)
    rows: list[Row] = []
    t = rng.expovariate(a.chat_rate)
    while t < a.seconds:
        rows.append({"timestamp": round(t, 4), "text": CHAT, "output_tokens": 32, "label": "chat"})
        t += rng.expovariate(a.chat_rate)
    t = 0.5 / a.long_rate
    while t < a.seconds:
        text = " ".join(rng.choice(WORDS) for _ in range(a.long_words))
        rows.append({"timestamp": round(t, 4), "text": text, "output_tokens": 1, "label": "long"})
        t += 1 / a.long_rate
    rows.sort(key=lambda r: float(str(r["timestamp"])))
    with open(folder / "trace.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    workload = folder / "workload.yaml"
    workload.write_text("api: chat\nreplay: {file: trace.jsonl}\n")
    return workload, rows


def share(rows: list[Row], layout: str, profiled: str) -> list[Row]:
    """The rows the trace sends to the engine beside `profiled` (see the docstring)."""
    if layout == "agg2":
        chats = [r for r in rows if r["label"] == "chat"][1::2]
        longs = [r for r in rows if r["label"] == "long"][1::2]
        return sorted(chats + longs, key=lambda r: float(str(r["timestamp"])))
    wanted = "long" if profiled == "decode-0" else "chat"  # the prefill engine's, or decode's
    return [r for r in rows if r["label"] == wanted]


def laps(rows: list[Row], period: float) -> Iterator[PlannedRequest]:
    """`rows` on their timestamps, round after round without end. Each prompt opens with
    its own mark, so the engine's prefix cache holds none of the trace's prompts when the
    bench comes (run 7 of docs/benchmarks.md: without the mark the P/D prefill engine had
    every long prompt cached, and served them in half the time)."""
    for lap in itertools.count():
        for i, row in enumerate(rows):
            yield PlannedRequest(
                index=lap * len(rows) + i,
                at=lap * period + float(str(row["timestamp"])),
                max_tokens=int(str(row["output_tokens"])),
                input_tokens=0,  # only reports read it, and this load is not reported
                messages=[{"role": "user", "content": f"[{lap}.{i}] {row['text']}"}],
            )


def discard(result: Result) -> None:
    """The companion is load only: its answers are not read."""


def steal() -> float:
    """Seconds of steal so far, summed over the cores."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


@contextlib.contextmanager
def stolen(what: str) -> Iterator[None]:
    """Prints the host's steal time while `what` ran, as a share of the cores' time."""
    s0, t0 = steal(), time.perf_counter()
    yield
    wall = (time.perf_counter() - t0) * (psutil.cpu_count() or 1)
    print(f"  {what}: host steal {(steal() - s0) / wall:.1%} of the cores", file=sys.stderr)


def engine_ports(state: list[str]) -> dict[str, int]:
    """The engines' ports by component name, from `pdserve status`."""
    out = subprocess.run([*PDSERVE, "status", *state], capture_output=True, text=True).stdout
    ports = {}
    for line in out.splitlines():
        cells = line.split()
        if "engine" in line and "port" in cells and not cells[0].startswith("sidecar"):
            ports[cells[0]] = int(cells[cells.index("port") + 1])
    return ports


def profile(url: str, out: Path, beside: tuple[int, list[Row], float] | None = None) -> None:
    """`pdserve profile` of the engine at `url`; with `beside` (another engine's port,
    rows and the trace's length), while that engine serves those rows."""
    cmd = [
        *PDSERVE,
        "profile",
        "--url",
        url,
        "--model",
        MODEL,
        "--output",
        str(out),
        "--prompt-tokens",
        "32,128,256,512",  # the workload's range: a chat's ~35 tokens to a long prompt's ~430
        "--batches",
        "1,2,4,8",
        "--long-context",
        "1024",
        "--repeats",
        "5",
    ]
    with stolen(f"profile of {url}" + (f" beside :{beside[0]}" if beside else "")):
        code, err = asyncio.run(_profile(cmd, beside))
    if code != 0:
        raise SystemExit(f"pdserve profile failed:\n{err[-2000:]}")
    for line in err.splitlines():  # its measured points, which the fit in `out` summarises
        print(f"    {line.removeprefix('pdserve profile: ')}", file=sys.stderr)


async def _profile(cmd: list[str], beside: tuple[int, list[Row], float] | None) -> tuple[int, str]:
    load = None
    if beside is not None:
        port, rows, period = beside
        target = Target(f"http://127.0.0.1:{port}", MODEL)
        load = asyncio.create_task(open_loop(target, laps(rows, period), Counters(), discard))
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
    finally:
        if load is not None:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
    return proc.returncode or 0, err.decode(errors="replace")


async def ttft(client: httpx.AsyncClient, url: str, text: str) -> float:
    body = {
        "model": MODEL,
        "max_tokens": 1,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": text}],
    }
    start = time.perf_counter()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return (time.perf_counter() - start) * 1000
    raise SystemExit(f"{url}: no token streamed")


async def pull_cost(gateway: str, prefill: str, step_ms: float) -> tuple[float, float]:
    """(overhead ms, ms per token) of a P/D pull, as the docstring of this file says."""
    rng = random.Random(99)
    points: list[tuple[int, float]] = []
    async with httpx.AsyncClient(timeout=300) as client:
        for words in (200, 800):
            texts = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(6)]
            pd = [await ttft(client, gateway, t) for t in texts[:3]]
            own = [await ttft(client, prefill, t) for t in texts[3:]]
            extra = statistics.median(pd) - statistics.median(own) - step_ms
            points.append((int(words * 1.25), max(extra, 0.0)))  # ~1.25 tokens a word
            print(
                f"  pull at ~{points[-1][0]} tokens: P/D TTFT {statistics.median(pd):.0f} "
                f"ms, prefill engine {statistics.median(own):.0f} ms, "
                f"pull {extra:.0f} ms",
                file=sys.stderr,
            )
    (n0, c0), (n1, c1) = points
    per_token = max((c1 - c0) / (n1 - n0), 0.0)
    return max(c0 - per_token * n0, 0.0), per_token


def bench(url: str, workload: Path, out: Path, *pace: str) -> Figures:
    """`pdserve bench` of `workload` at `url`, paced by `pace` (its --duration and the
    like); the report's figures as this comparison reads them."""
    cmd = [*PDSERVE, "bench", "--url", url, "--model", MODEL, "--workload", str(workload)]
    done = subprocess.run([*cmd, *pace, "--output", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pdserve bench failed:\n{done.stderr[-2000:]}")
    return figures(out)


def simulate(path: Path, workload: Path, prof: Path, out: Path) -> Figures:
    cmd = [*PDSERVE, "simulate", str(path), "--workload", str(workload), "--profile", str(prof)]
    prefill = prof.with_name(prof.stem + "-prefill.yaml")
    if prefill.exists():
        cmd += ["--prefill-profile", str(prefill)]
    cmd += ["--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pdserve simulate failed:\n{done.stderr[-2000:]}")
    return figures(out)


def figures(report: Path) -> Figures:
    """The all-requests figures, and the chats' and long prompts' TTFT when the report has
    their classes (a report of an unlabelled trace, kept from an earlier run, has not)."""
    r = json.loads(report.read_text())
    out = {
        "ttft_p50": r["ttft_ms"]["p50"],
        "ttft_p90": r["ttft_ms"]["p90"],
        "itl_p50": r["itl_ms"]["p50"],
        "itl_p90": r["itl_ms"]["p90"],
        "requests": r["requests"],
        "errors": sum(r["errors"].values()),
    }
    classes = r.get("classes", {})
    if "chat" in classes:
        out["chat_ttft_p50"] = classes["chat"]["ttft_ms"]["p50"]
        out["chat_ttft_p90"] = classes["chat"]["ttft_ms"]["p90"]
    if "long" in classes:
        out["long_ttft_p50"] = classes["long"]["ttft_ms"]["p50"]
    return out


def measure(
    layout: str, folder: Path, workload: Path, rows: list[Row], a: argparse.Namespace
) -> Figures:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = ["--state-dir", str(folder / f"state-{layout}")]
    up = [*PDSERVE, "up", str(manifest(folder, layout)), "--engine", "vllm", "--detach"]
    started = time.perf_counter()
    done = subprocess.run([*up, "--port", str(port), *state], capture_output=True, text=True)
    try:
        if done.returncode != 0:
            raise SystemExit(f"{layout}: pdserve up failed:\n{done.stderr[-3000:]}")
        print(f"{layout}: ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        ports = engine_ports(state)

        def beside(profiled: str, other: str) -> tuple[int, list[Row], float] | None:
            return (
                None
                if a.profile_alone
                else (ports[other], share(rows, layout, profiled), a.seconds)
            )

        def at(name: str) -> str:
            return f"http://127.0.0.1:{ports[name]}"

        if layout == "agg2":
            profile(at("engine-0"), folder / "profile-1core.yaml", beside("engine-0", "engine-1"))
        elif layout == "agg1":  # the gateway has only this engine to pick
            profile(at("engine-0") if a.profile_alone else url, folder / "profile-2core.yaml")
        else:  # each P/D engine measured as it runs, with its KV connector
            profile(
                at("prefill-0"), folder / "profile-pd-prefill.yaml", beside("prefill-0", "decode-0")
            )
            profile(at("decode-0"), folder / "profile-pd.yaml", beside("decode-0", "prefill-0"))
            base = yaml.safe_load((folder / "profile-pd.yaml").read_text())
            overhead, per_token = asyncio.run(
                pull_cost(url, at("prefill-0"), base["decode_base_ms"])
            )
            base |= {"kv_pull_overhead_ms": overhead, "kv_pull_ms_per_token": per_token}
            (folder / "profile-pd.yaml").write_text(yaml.safe_dump(base))
        print(f"{layout}: bench ...", file=sys.stderr, flush=True)
        with stolen(f"{layout} bench"):
            return bench(
                url, workload, folder / f"bench-{layout}.json", "--duration", str(a.seconds + 1)
            )
    finally:
        subprocess.run([*PDSERVE, "down", *state], capture_output=True)


def ranks(rows: dict[str, Figures], key: str) -> list[str]:
    return sorted(rows, key=lambda layout: rows[layout][key])


def cell(f: Figures, key: str, fmt: str) -> str:
    """A figure in ms, or `-` where the report has none (no class, nothing measured)."""
    value = f.get(key)
    return "-" if value is None else f"{value:{fmt}} ms"


def error(simulated: Figures, measured: Figures, key: str) -> str:
    sim, meas = simulated.get(key), measured.get(key)
    return "-" if sim is None or not meas else f"{sim / meas - 1:+.0%}"


def table(layouts: list[str], measured: dict[str, Figures], simulated: dict[str, Figures]) -> str:
    """Measured against simulated, per layout, and whether the two rank the layouts alike."""
    lines = [
        "| layout | | requests | " + " | ".join(head for _, head, _ in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for layout in layouts:
        for kind, rows in (("measured", measured), ("simulated", simulated)):
            f = rows[layout]
            cells = " | ".join(cell(f, key, fmt) for key, _, fmt in COLUMNS)
            lines.append(f"| {layout} | {kind} | {f['requests']} | {cells} |")
        errs = " | ".join(error(simulated[layout], measured[layout], k) for k, _, _ in COLUMNS)
        lines.append(f"| {layout} | sim / measured - 1 | | {errs} |")
    for key in ORDERS:
        if any(
            rows[layout].get(key) is None for rows in (measured, simulated) for layout in layouts
        ):
            lines.append(f"order by {key}: not in every report")
            continue
        m, s = ranks(measured, key), ranks(simulated, key)
        verdict = "same" if m == s else "DIFFERENT"
        lines.append(
            f"order by {key}: measured {' < '.join(m)}; simulated {' < '.join(s)}: {verdict}"
        )
    return "\n".join(lines)


def run(folder: Path, layouts: list[str], a: argparse.Namespace) -> tuple[ByLayout, ByLayout]:
    """One measurement and simulation of every layout: (measured, simulated) by layout."""
    folder.mkdir(parents=True, exist_ok=True)
    workload, rows = write_trace(folder, a)
    measured = {layout: measure(layout, folder, workload, rows, a) for layout in layouts}
    simulated = {
        layout: simulate(
            manifest(folder, layout),
            workload,
            folder / f"profile-{CORES[layout]}.yaml",
            folder / f"sim-{layout}.json",
        )
        for layout in layouts
    }
    for name in sorted(folder.glob("profile-*.yaml")):
        print(f"--- {folder.name}/{name.name}\n{name.read_text()}")
    return measured, simulated


def medians(runs: list[ByLayout]) -> ByLayout:
    """Per layout, each figure's median over the runs (a figure some run lacks is left out)."""
    return {
        layout: {
            key: statistics.median(r[layout][key] for r in runs)
            for key in runs[0][layout]
            if all(key in r[layout] for r in runs)
        }
        for layout in runs[0]
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--chat-rate", type=float, default=1.2)
    ap.add_argument("--long-rate", type=float, default=0.5)
    ap.add_argument("--long-words", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--layouts", default="agg2,agg1,pd", help="agg2 first: pd needs its profile")
    ap.add_argument("--keep", type=Path, help="keep profiles, traces and reports here")
    ap.add_argument(
        "--profile-alone", action="store_true", help="profile each engine with the other idle"
    )
    ap.add_argument("--runs", type=int, default=1, help="repeat; compare medians too")
    a = ap.parse_args()
    layouts = a.layouts.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="pdserve-agreement-") as tmp:
        folder = a.keep or Path(tmp)
        for i in range(a.runs):
            print(f"run {i + 1} of {a.runs}", file=sys.stderr, flush=True)
            results.append(run(folder / f"run-{i + 1}" if a.runs > 1 else folder, layouts, a))
    print(
        f"trace: {a.seconds:g} s, chats at {a.chat_rate}/s, {a.long_words}-word prompts "
        f"at {a.long_rate}/s"
    )
    for i, (measured, simulated) in enumerate(results):
        if a.runs > 1:
            print(f"run {i + 1}:")
        print(table(layouts, measured, simulated))
    if a.runs > 1:
        print(f"medians of the {a.runs} runs:")
        print(table(layouts, medians([m for m, _ in results]), medians([s for _, s in results])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
