"""`pdserve plan` on the two contrasting example workloads: long prompts with short answers
and short prompts with long answers, on 8 GPUs, each recommendation re-checked with seed 1.

Runs the three commands of docs/benchmarks.md ("pdserve plan on two contrasting
workloads") one after another, in this process (the CLI's main), so their progress goes to
stderr and their recommendations to stdout as a user would see them.

usage: .venv/bin/python bench/plan_workloads.py [--requests 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdserve.cli import main

REPO = Path(__file__).resolve().parents[1]
SLO = "ttft_p90=2s,itl_p90=50ms"
RUNS = (
    ("long-prompts", "10", ()),
    ("long-answers", "20", ()),
    ("long-answers", "20", ("--layouts", "pd")),
)


def run(requests: int) -> int:
    worst = 0
    for name, rate, extra in RUNS:
        print(f"== {name} at {rate}/s {' '.join(extra)}", flush=True)
        workload = str(REPO / "examples" / "workloads" / f"{name}.yaml")
        argv = ["plan", "--workload", workload, "--rate", rate, "--slo", SLO]
        argv += ["--accelerators", "8", "--requests", str(requests), "--check-seed", "1"]
        worst = max(worst, main([*argv, *extra]))
    return worst


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    sys.exit(run(ap.parse_args().requests))
