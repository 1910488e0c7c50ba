"""`pdserve bench` against guidellm: one `pdserve up --engine sim` service, the same prompts,
the same closed loop, the two tools taking turns.

Each run gets prompts of its own (distinct words, so every request misses the prefix cache
and the EPP disaggregates it), written once as guidellm's JSONL dataset (`prompt`,
`output_tokens_count`) and once as bench's replay trace (`text`, `output_tokens`). A closed
loop is used rather than Poisson because guidellm prepares its requests in worker processes
and, on a busy 2-core machine, dispatches a Poisson schedule late and in bursts (its own
"root dispatch delay" warning), which would compare two different loads. Prints each run's
TTFT and ITL p50/p90 as the tool reports them, and bench / guidellm for the medians.

guidellm lives in a venv of its own (it needs torch), see README "Benchmark it".

usage: .venv/bin/python bench/guidellm_agreement.py [--guidellm .venv-guidellm/bin/guidellm]
           [--concurrency 4] [--seconds 30] [--rounds 2] [--prompt-tokens 512]
           [--output-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pdserve.bench.text import words
from pdserve.process import free_port
from vllm_agreement import bench

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pd-smollm2.yaml"
PDSERVE = [sys.executable, "-m", "pdserve"]
MODEL = "smollm2"
Figures = dict[str, float]


def write_prompts(folder: Path, name: str, count: int, args: argparse.Namespace) -> None:
    rng = random.Random(name)
    texts = [f"{name} {i}" + words(rng, args.prompt_tokens - 2) for i in range(count)]
    with open(folder / f"{name}-guidellm.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"prompt": t, "output_tokens_count": args.output_tokens}) + "\n")
    with open(folder / f"{name}-trace.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"timestamp": 0, "text": t, "output_tokens": args.output_tokens}))
            f.write("\n")
    (folder / f"{name}-workload.yaml").write_text(
        f"api: chat\nreplay: {{file: {name}-trace.jsonl}}\n"
    )


def run_guidellm(
    folder: Path, name: str, url: str, tokenizer: str, a: argparse.Namespace
) -> Figures:
    out = folder / f"{name}.json"
    cmd = [
        a.guidellm,
        "run",
        "--backend",
        f"kind=openai_http,target={url},model={MODEL}",
        "--tokenizer",
        f"kind=hf_auto,model={tokenizer}",
        "--profile",
        f"kind=concurrent,streams={a.concurrency}",
        "--data",
        f"kind=json_file,path={folder / f'{name}-guidellm.jsonl'}",
        "--constraint",
        f"kind=max_duration,seconds={a.seconds}",
        "--output",
        f"kind=json,path={out}",
        "--disable-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"guidellm failed ({done.returncode}):\n{done.stderr[-2000:]}")
    metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]

    def pct(key: str, q: str) -> float:
        return float(metrics[key]["successful"]["percentiles"][q])

    return {
        "ttft_p50": pct("time_to_first_token_ms", "p50"),
        "ttft_p90": pct("time_to_first_token_ms", "p90"),
        "itl_p50": pct("inter_token_latency_ms", "p50"),
        "itl_p90": pct("inter_token_latency_ms", "p90"),
        "requests": float(metrics["time_to_first_token_ms"]["successful"]["count"]),
        "errors": float(metrics["time_to_first_token_ms"]["errored"]["count"]),
    }


def tokenizer_of(state: list[str]) -> str:
    status = subprocess.run([*PDSERVE, "status", *state], capture_output=True, text=True)
    for line in status.stdout.splitlines():
        if line.strip().startswith("tokenizer:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"pdserve status printed no tokenizer:\n{status.stdout}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guidellm", default=str(REPO / ".venv-guidellm" / "bin" / "guidellm"))
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=64)
    a = ap.parse_args()
    if not Path(a.guidellm).exists():
        raise SystemExit(f"--guidellm: {a.guidellm} not found (see README, Benchmark it)")
    rows: list[tuple[str, int, Figures]] = []
    with tempfile.TemporaryDirectory(prefix="pdserve-guidellm-") as tmp:
        folder = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        state = ["--state-dir", str(folder / "state")]
        up = [*PDSERVE, "up", str(EXAMPLE), "--engine", "sim", "--detach", "--port", str(port)]
        done = subprocess.run([*up, *state], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"pdserve up failed:\n{done.stderr}")
        try:
            tokenizer = tokenizer_of(state)
            count = a.seconds * 200  # more than either tool can send at this concurrency
            for rnd in range(a.rounds):
                for tool in ("guidellm", "bench"):
                    name = f"{tool}{rnd}"
                    write_prompts(folder, name, count, a)
                    print(f"round {rnd}: {tool} ...", file=sys.stderr, flush=True)
                    if tool == "guidellm":
                        fig = run_guidellm(folder, name, url, tokenizer, a)
                    else:
                        workload = folder / f"{name}-workload.yaml"
                        pace = ("--concurrency", str(a.concurrency), "--duration", str(a.seconds))
                        fig = bench(url, workload, folder / f"{name}.json", *pace)
                    rows.append((tool, rnd, fig))
        finally:
            subprocess.run([*PDSERVE, "down", *state], capture_output=True)
    print(
        f"closed loop of {a.concurrency}, {a.seconds} s a run, "
        f"{a.prompt_tokens} prompt / {a.output_tokens} output tokens"
    )
    print("| tool | round | requests | errors | TTFT p50 | TTFT p90 | ITL p50 | ITL p90 |")
    print("|---|---|---|---|---|---|---|---|")
    for tool, rnd, f in rows:
        print(
            f"| {tool} | {rnd} | {f['requests']:.0f} | {f['errors']:.0f} | "
            f"{f['ttft_p50']:.1f} ms | {f['ttft_p90']:.1f} ms | "
            f"{f['itl_p50']:.2f} ms | {f['itl_p90']:.2f} ms |"
        )
    for key in ("ttft_p50", "ttft_p90", "itl_p50", "itl_p90"):
        ours = statistics.median(f[key] for t, _, f in rows if t == "bench")
        theirs = statistics.median(f[key] for t, _, f in rows if t == "guidellm")
        print(
            f"{key}: bench {ours:.2f} ms, guidellm {theirs:.2f} ms, "
            f"bench / guidellm {ours / theirs:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
