"""llm-d's "KV-Cache Wins You Can See" shared-prefix experiment, in simulation (issue 14).

Four EndpointPickerConfigs (examples/experiments/kv-cache-wins/: precise, approximate,
load, random) route the same seeded workload (150 groups of 6,000-token prefixes,
1,200-token questions, 1,000-token answers) to 8 aggregated sim engines with a KV cache too
small for every prefix on every engine (profile.yaml says why), at rising Poisson rates.
Each run is `pdserve simulate`'s own Simulation; the first --warmup requests seat the
prefixes (the post's warm-up stage) and are left out of the figures. Prints rate x
scheduler -> TTFT p50/p90, each p90's ratio to random's in the same run, and the engines'
prefix-cache hit share of prompt tokens.

    PYTHONPATH=src .venv/bin/python bench/kv_cache_wins.py --rates 4,10,16
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "examples" / "experiments" / "kv-cache-wins"
SCHEDULERS = ("precise", "approximate", "load", "random")


def run_one(
    manifest: Path,
    workload_path: Path,
    profile: Path,
    rate: float,
    requests: int,
    warmup: int,
    seed: int,
) -> dict[str, Any]:
    """One simulation: the report of the requests after the warm-up, and the cache hits."""
    from pdserve.bench import report
    from pdserve.bench.workload import load as load_workload
    from pdserve.simulate.fleet import load_fleet
    from pdserve.simulate.link import make_link
    from pdserve.simulate.simulator import Options, Simulation

    started = time.perf_counter()
    fleet = load_fleet(manifest, str(profile))
    workload = load_workload(workload_path).with_rate(rate)
    options = Options(seed=seed, max_requests=warmup + requests, ahead=True)
    sim = Simulation(fleet, workload, options, make_link(fleet.pools[-1].profile))
    results, elapsed = sim.run()
    measured = [r for r in results if r.planned.index >= warmup]
    summary = report.build(measured, elapsed)
    queries = sum(e.blocks.queries for e in sim.engines)
    hits = sum(e.blocks.hits for e in sim.engines)
    p = fleet.pools[-1].profile
    return {
        "ttft_ms": summary["ttft_ms"],
        "errors": summary["errors"],
        "requests": summary["requests"],
        "hit": hits / queries if queries else 0.0,
        "kv_tokens": p.num_blocks * p.block_size,
        "engines": fleet.engines,
        "wall_s": time.perf_counter() - started,
    }


def table(rates: list[float], out: dict[tuple[float, str], dict[str, Any]]) -> str:
    lines = [
        "| rate (req/s) | scheduler | TTFT p50 (s) | TTFT p90 (s) | p90 / random | "
        "prefix-cache hit | ordering (p90) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        p90 = {s: out[rate, s]["ttft_ms"]["p90"] for s in SCHEDULERS}
        holds = p90["precise"] < p90["approximate"] < min(p90["load"], p90["random"])
        for s in SCHEDULERS:
            r = out[rate, s]
            ratio = p90[s] / p90["random"] if p90["random"] else float("nan")
            errors = f" ({r['errors']})" if r["errors"] else ""
            lines.append(
                f"| {rate:g} | {s}{errors} | {r['ttft_ms']['p50'] / 1000:.3f} | "
                f"{p90[s] / 1000:.3f} | {ratio:.3f} | {r['hit']:.0%} | "
                + (("holds" if holds else "does not hold") if s == "precise" else "")
                + " |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="4,10,16", help="requests/s, comma-separated")
    ap.add_argument("--requests", type=int, default=800, help="measured requests per run")
    ap.add_argument("--warmup", type=int, default=300, help="requests run first, not measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="simulations at once (processes)")
    ap.add_argument("--folder", type=Path, default=FOLDER, help="manifests, workload, profile")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    folder = args.folder
    workload, profile = folder / "workload.yaml", folder / "profile.yaml"
    out: dict[tuple[float, str], dict[str, Any]] = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(
                run_one,
                folder / f"{s}.yaml",
                workload,
                profile,
                rate,
                args.requests,
                args.warmup,
                args.seed,
            ): (rate, s)
            for rate in rates
            for s in SCHEDULERS
        }
        for done, future in enumerate(as_completed(futures), 1):
            key = futures[future]
            out[key] = r = future.result()
            print(
                f"[{done}/{len(futures)} {time.perf_counter() - started:6.0f} s] rate {key[0]:g} "
                f"{key[1]}: TTFT p90 {r['ttft_ms']['p90'] / 1000:.3f} s "
                f"(run {r['wall_s']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    sizes = {r["kv_tokens"] for r in out.values()}
    assert len(sizes) == 1, f"the configs ran different KV caches: {sizes}"
    first = next(iter(out.values()))
    print(
        f"{first['engines']} engines, {sizes.pop():,} KV tokens each; {args.warmup} warm-up "
        f"+ {args.requests} measured requests per run, seed {args.seed}"
    )
    print(table(rates, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
