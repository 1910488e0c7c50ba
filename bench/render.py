"""Render benchmark: in-process render of the P/D sample, and the whole `pdserve render` process.

    .venv/bin/python bench/render.py [--runs 200]

Anchors in the same run: json.dumps of the rendered objects (in-process) and
`python -c pass` (whole process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pdserve import api, render

SAMPLE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "kserve-v0.16-samples"
    / "llm-inference-service-pd-facebook-opt-125m-cpu.yaml"
)


def _timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    docs = api.load(SAMPLE)

    def whole_pipeline() -> list:
        return render.render(api.resolve(docs[0]))

    objs = whole_pipeline()
    inproc = _timed(whole_pipeline, args.runs)
    anchor = _timed(lambda: json.dumps(objs), args.runs)
    p50, p99 = inproc[len(inproc) // 2], inproc[int(len(inproc) * 0.99)]
    a50 = anchor[len(anchor) // 2]
    print(
        f"in-process merge+template+render of the P/D sample: p50 {p50 * 1e3:.2f} ms, "
        f"p99 {p99 * 1e3:.2f} ms (target <= 20 ms: {'met' if p99 <= 0.02 else 'missed'}); "
        f"json.dumps of the result {a50 * 1e3:.3f} ms; ratio {p50 / a50:.1f}x"
    )
    cmd = [sys.executable, "-m", "pdserve", "render", str(SAMPLE)]
    proc = _timed(lambda: subprocess.run(cmd, check=True, capture_output=True), 10)
    base = _timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 10)
    w, b = statistics.median(proc), statistics.median(base)
    print(
        f"whole process `pdserve render`: median {w * 1e3:.0f} ms (target <= 500 ms: "
        f"{'met' if w <= 0.5 else 'missed'}); python -c pass {b * 1e3:.0f} ms; ratio {w / b:.1f}x"
    )


if __name__ == "__main__":
    main()
