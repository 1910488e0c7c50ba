"""`pdserve simulate` speed: requests over a 16-engine P/D fleet per wall second.

    .venv/bin/python bench/simulate_speed.py [--requests 100000] [--prefill 8] [--decode 8]
        [--digest]

The fleet is examples/pd-smollm2.yaml with its replicas changed (its EPP config, default
sim profile); the workload is single-turn chat, 100-400 prompt and 16-128 output tokens,
Poisson at --rate. Target: 100k requests over 16 engines in under 60 s. Anchor, same run:
the workload generator alone for the same requests (what bench itself pays to plan them).
`--digest` prints hashes of the report JSON and of every result's fields, beside the
engines' counters: a speed change must leave all three byte-identical (run it before and
after at e.g. 6,000 requests).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import yaml

from pdserve.bench import report
from pdserve.bench.client import Result
from pdserve.bench.generator import requests
from pdserve.bench.workload import parse
from pdserve.simulate.fleet import load_fleet
from pdserve.simulate.link import make_link
from pdserve.simulate.simulator import Options, Simulation

REPO = Path(__file__).resolve().parent.parent
WORKLOAD = {
    "api": "chat",
    "arrival": {"process": "poisson", "rate": 200},
    "input_tokens": {"dist": "uniform", "min": 100, "max": 400},
    "output_tokens": {"dist": "uniform", "min": 16, "max": 128},
}


def manifest(folder: Path, prefill: int, decode: int) -> Path:
    doc = yaml.safe_load((REPO / "examples" / "pd-smollm2.yaml").read_text())
    doc["spec"]["replicas"] = decode
    doc["spec"]["prefill"]["replicas"] = prefill
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def digests(results: list[Result], summary: dict[str, object], sim: Simulation) -> list[str]:
    """What must not change: the report, each result (floats by repr, so to the last bit,
    in completion order) and each engine's steps, prefix-cache hits and preemptions."""
    rows = hashlib.sha256()
    for r in results:
        fields = (r.planned.index, r.sent_s, r.ttft_ms, r.itl_ms, r.e2e_ms, r.output_tokens)
        rows.update(repr((*fields, r.error)).encode())
    engines = [(e.steps, e.blocks.hits, e.sched.num_preemptions) for e in sim.engines]
    return [
        "report  " + hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest(),
        "results " + rows.hexdigest(),
        "engines " + hashlib.sha256(repr(engines).encode()).hexdigest(),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--prefill", type=int, default=8)
    ap.add_argument("--decode", type=int, default=8)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--digest", action="store_true", help="print the result digests")
    ap.add_argument("--inline", action="store_true", help="make arrivals in this process")
    args = ap.parse_args()
    workload = parse({**WORKLOAD, "arrival": {"process": "poisson", "rate": args.rate}})
    t0 = time.perf_counter()
    planned = sum(1 for _ in itertools.islice(requests(workload, 0, None), args.requests))
    anchor = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        fleet = load_fleet(manifest(Path(tmp), args.prefill, args.decode))
    options = Options(max_requests=args.requests, ahead=not args.inline)
    sim = Simulation(fleet, workload, options, make_link(fleet.pools[-1].profile))
    t0, cpu0 = time.perf_counter(), time.process_time()
    results, virtual = sim.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    summary = report.build(results, virtual)
    steps = sum(e.steps for e in sim.engines)
    print(f"fleet: {args.prefill} prefill + {args.decode} decode engines, rate {args.rate}/s")
    print(f"tokenizer: {fleet.tokenizer_dir or 'the built-in one (the model is not cached here)'}")
    print(
        f"simulated {len(results)} requests ({virtual:.0f} s virtual) in {wall:.1f} s wall, "
        f"{cpu:.1f} s CPU (the machine is shared: CPU time is this process's own share)"
    )
    print(f"  {len(results) / wall:,.0f} requests/s, {steps / wall:,.0f} engine steps/s")
    ratio = wall / anchor
    print(f"anchor: the generator alone, {planned} req in {anchor:.1f} s (sim/anchor {ratio:.0f}x)")
    print(report.text(summary))
    if args.digest:
        print("\n".join(digests(results, summary, sim)))


if __name__ == "__main__":
    main()
