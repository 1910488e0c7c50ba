"""Time from `pdserve up --detach` to ready, sim engines vs vLLM CPU engines.

Runs the bundled P/D example (1 prefill + 1 decode) with each engine kind in
turn, the model already converted (cached), then one request through the
gateway to confirm it serves. Prints seconds to ready and the vLLM/sim ratio.

--compile-cache cold: vLLM's compile caches (engines/cache.py) start empty in a
folder of this run's, then the same start-up runs again on what the first one
compiled; prints both and the warm/cold ratio.

usage: .venv/bin/python bench/up_ready.py [--engines sim,vllm] [--runs N]
       .venv/bin/python bench/up_ready.py --engines vllm --compile-cache cold
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pdserve.engines import model
from pdserve.process import free_port

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pd-smollm2.yaml"
PDSERVE = [sys.executable, "-m", "pdserve"]


def up_once(engine: str, env: dict[str, str] | None = None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        state = ["--state-dir", tmp]
        start = time.perf_counter()
        done = subprocess.run(
            [
                *PDSERVE,
                "up",
                str(EXAMPLE),
                "--engine",
                engine,
                "--detach",
                "--port",
                str(port),
                *state,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        elapsed = time.perf_counter() - start
        try:
            if done.returncode != 0:
                raise SystemExit(f"pdserve up --engine {engine} failed:\n{done.stderr}")
            reply = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={
                    "model": "smollm2",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
                timeout=300,
            )
            reply.raise_for_status()
        finally:
            subprocess.run([*PDSERVE, "down", *state], capture_output=True)
        return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="sim,vllm")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--compile-cache", choices=("as-is", "cold"), default="as-is")
    args = ap.parse_args()
    t = time.perf_counter()
    model.resolve("builtin://smollm2-135m-instruct")  # warm cache: measure start-up, not conversion
    print(f"model folder ready in {time.perf_counter() - t:.1f}s (cached after the first run)")
    if args.compile_cache == "cold":
        return cold_then_warm(args.engines.split(","))
    best: dict[str, float] = {}
    for engine in args.engines.split(","):
        times = [up_once(engine) for _ in range(args.runs)]
        best[engine] = min(times)
        print(f"{engine:>5}: up -> ready {', '.join(f'{x:.1f}s' for x in times)}")
    if {"sim", "vllm"} <= best.keys():
        print(f"vllm / sim start-up ratio: {best['vllm'] / best['sim']:.0f}x")


def cold_then_warm(engines: list[str]) -> None:
    from pdserve.engines.cache import COMPILE_CACHES

    for engine in engines:
        with tempfile.TemporaryDirectory() as caches:
            env = {**os.environ, **{var: f"{caches}/{sub}" for var, sub in COMPILE_CACHES.items()}}
            cold = up_once(engine, env)
            warm = up_once(engine, env)
        print(f"{engine:>5}: up -> ready, compile caches cold {cold:.1f}s, warm {warm:.1f}s")
        print(f"{engine:>5}: warm / cold ratio {warm / cold:.2f}")


if __name__ == "__main__":
    main()
