"""`pdserve plan --workload W --slo ... --accelerators N`: the cheapest layout that meets
the SLOs, found by simulating each candidate; prints it and the runner-up it beat, and
writes its LLMInferenceService (--output)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import yaml

from pdserve.bench.workload import load as load_workload
from pdserve.errors import UserError
from pdserve.flags import OneLineParser, number
from pdserve.plan.search import Result, Space, Trial, search
from pdserve.plan.simulation import Setup, Simulator, manifest

DEFAULT_MODEL = "builtin://smollm2-135m-instruct"
DEFAULT_REQUESTS = 200


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="pdserve plan",
        description="Find the cheapest serving layout (prefill and decode replicas and "
        "tensor parallelism, or aggregated) that meets the SLOs, by simulating each one "
        "under the workload (as pdserve simulate), fewest accelerators first.",
        epilog="Cheapest: fewest accelerators at which a layout's share of requests meeting "
        "every SLO reaches --threshold; among those, the highest goodput. TP t is modelled "
        "as t x 0.9 per doubling faster compute and t x the KV blocks (simulate/tensor.py).",
    )
    ap.add_argument(
        "--workload", required=True, metavar="FILE", help="a workload YAML file (as for bench)"
    )
    ap.add_argument("--slo", required=True, help="objectives, e.g. ttft_p90=2s,itl_p90=50ms")
    ap.add_argument(
        "--accelerators", required=True, type=number(int), metavar="N", help="GPUs to spend"
    )
    ap.add_argument("--profile", help="sim engine profile of one GPU (default: its defaults)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"model URI (default {DEFAULT_MODEL})")
    ap.add_argument("--name", default="llm", help="the LLMInferenceService's name (llm)")
    ap.add_argument(
        "--max-tp", type=number(int), default=8, metavar="T", help="largest TP group (8)"
    )
    ap.add_argument(
        "--layouts", choices=("all", "pd", "aggregated"), default="all", help="what to try (all)"
    )
    ap.add_argument("--threshold", type=_fraction, default=0.9, help="share meeting the SLOs (0.9)")
    ap.add_argument("--seed", type=int, default=0, help="the workload's and the EPP's seed")
    ap.add_argument("--duration", type=number(float), help="seconds of arrivals per run")
    ap.add_argument(
        "--requests", type=number(int), help=f"or requests per run ({DEFAULT_REQUESTS})"
    )
    ap.add_argument("--rate", type=number(float), help="requests/s, overriding the workload's")
    ap.add_argument(
        "--output", type=Path, metavar="FILE", help="write the recommended LLMInferenceService here"
    )
    ap.add_argument(
        "--check-seed",
        type=int,
        help="then re-simulate every layout tried with this seed and say whether the "
        "recommendation still has the highest goodput",
    )
    return ap


def main(argv: list[str]) -> int:
    from pdserve.bench import slo
    from pdserve.engines.sim.profile import load_profile

    args = parser().parse_args(argv[1:])
    objectives = slo.parse(args.slo)
    load_profile(args.profile)  # a bad profile fails now, not at the first simulation
    workload = load_workload(args.workload)
    if args.rate is not None:
        workload = workload.with_rate(args.rate)
    requests = args.requests
    if workload.replay is None and args.duration is None and requests is None:
        requests = DEFAULT_REQUESTS
    setup = Setup(
        workload=workload,
        objectives=objectives,
        duration=args.duration,
        requests=requests,
        profile=args.profile,
        model_uri=args.model,
        model_name=_served_name(args.model),
        name=args.name,
    )
    space = Space(
        args.accelerators, args.max_tp, args.layouts != "pd", args.layouts != "aggregated"
    )
    simulate = Simulator(setup)
    started = time.perf_counter()
    result = search(
        space,
        lambda c: simulate(c, args.seed),
        args.threshold,
        _progress(sys.stderr, started),
    )
    wall = time.perf_counter() - started
    print(f"plan: simulated {len(result.tried)} layouts in {wall:.1f} s", file=sys.stderr)
    print(summary(result, args.accelerators))
    if result.winner is None:
        return 1
    if args.check_seed is not None:
        print(check(result, lambda t: simulate(t.candidate, args.check_seed).goodput))
    if args.output is not None:
        write(args.output, manifest(setup, result.winner.candidate))
    return 0


def _served_name(uri: str) -> str:
    """The OpenAI model name: the URI's last part (builtin://smollm2-135m-instruct gives
    smollm2-135m-instruct)."""
    return uri.rstrip("/").rsplit("/", 1)[-1] or "model"


def _progress(stream: TextIO, started: float) -> Callable[[Trial, int, int], None]:
    """A line per simulated layout: each takes up to seconds, so this is the search's
    heartbeat and shows why a count was passed over."""

    def show(trial: Trial, index: int, total: int) -> None:
        c, o = trial.candidate, trial.outcome
        stream.write(
            f"plan {time.perf_counter() - started:5.1f} s  {c.accelerators} GPUs "
            f"[{index}/{total}] {c.label}: goodput {o.goodput:.2f} req/s, "
            f"{o.fraction:.0%} within SLOs\n"
        )
        stream.flush()

    return show


def describe(trial: Trial) -> str:
    c, o = trial.candidate, trial.outcome
    ratio = "aggregated" if c.aggregated else f"prefill:decode {c.ratio}"
    gpus = f"{c.accelerators} GPU{'s' if c.accelerators > 1 else ''}"
    return (
        f"{c.label} ({gpus}, {ratio}): goodput {o.goodput:.2f} req/s, "
        f"{o.fraction:.0%} of requests within the SLOs"
    )


def summary(result: Result, accelerators: int) -> str:
    if result.winner is None:
        best = f"; the best was {describe(result.runner_up)}" if result.runner_up else ""
        return f"no layout on up to {accelerators} GPUs meets the SLOs{best}"
    lines = [f"recommended: {describe(result.winner)}"]
    if result.runner_up is not None:
        lines.append(f"runner-up:   {describe(result.runner_up)}")
    return "\n".join(lines)


def check(result: Result, goodput: Callable[[Trial], float]) -> str:
    """Each layout tried, re-run with another seed: does the recommendation still lead?"""
    assert result.winner is not None
    again = {t.candidate: goodput(t) for t in result.tried}
    mine = again[result.winner.candidate]
    rivals = [g for c, g in again.items() if c != result.winner.candidate]
    if not rivals:
        return f"check seed: recommendation goodput {mine:.2f} req/s (no other layout tried)"
    verdict = "still the highest" if all(mine > g for g in rivals) else "NOT the highest"
    return (
        f"check seed: recommendation goodput {mine:.2f} req/s, best other "
        f"{max(rivals):.2f}: {verdict}"
    )


def write(path: Path, doc: dict[str, object]) -> None:
    """Checked by the project's own loader first: what is written, `pdserve up` accepts."""
    from pdserve.api.loader import parse

    parse(doc, str(path))
    try:
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    except OSError as err:
        raise UserError(f"--output: cannot write {path}: {err.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)
