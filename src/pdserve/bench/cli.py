"""`pdserve bench`: a workload file sent to a running OpenAI-API service, measured.

Without `--rate` or `--concurrency` the workload's arrival process sets the pace (open
loop: requests go out on time whether or not the service keeps up, so overload shows as
latency and errors); `--rate` rescales it; `--concurrency C` is a closed loop of C users.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from pdserve.bench import plot, report, routing, slo
from pdserve.bench.client import Counters, Result, Target, closed_loop, open_loop
from pdserve.bench.generator import PlannedRequest, requests
from pdserve.bench.progress import show
from pdserve.bench.workload import load
from pdserve.errors import UserError
from pdserve.flags import OneLineParser, number


def parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="pdserve bench",
        description="Measure a running OpenAI-API service (streaming) under a workload.",
        epilog="The report (--output) has ttft_ms, itl_ms, e2e_ms (p50, p90, p99), "
        "requests_per_s, output_tokens_per_s, errors (by kind), goodput (requests/s meeting "
        "every --slo), requests and duration_s; with a labelled replay trace also classes "
        "(per label: ttft_ms, itl_ms, e2e_ms, requests); with --trace-dir also trace (per "
        "request: P/D decision and reason, prefill ms, KV pull ms, cached prompt tokens). "
        "Workloads: examples/workloads/.",
    )
    ap.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    ap.add_argument("--model", required=True, help="the model name requests ask for")
    ap.add_argument("--workload", required=True, help="a workload YAML file")
    pace = ap.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=number(float), help="requests/s, overriding the workload's")
    pace.add_argument(
        "--concurrency", type=number(int), help="closed loop: this many users at a time"
    )
    ap.add_argument("--duration", type=number(float), required=True, help="seconds of sending")
    ap.add_argument("--seed", type=int, default=0, help="the workload's random seed")
    ap.add_argument("--output", help="write the report as JSON here")
    ap.add_argument("--slo", help="objectives for goodput, e.g. ttft_p90=2s,itl_p90=50ms")
    ap.add_argument("--timeout", type=number(float), default=300.0, help="seconds per request")
    ap.add_argument("--plot", help="draw latency over time, CDFs and throughput to this .png")
    ap.add_argument(
        "--trace-dir",
        metavar="STATE",
        help="a pdserve up state folder: join each request's routing trace into the report",
    )
    return ap


def _base_url(url: str) -> str:
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UserError(f"--url: expected http:// or https://, got {url!r}")
    return base.removesuffix("/v1")


async def _run(
    target: Target, plan: Iterator[PlannedRequest], args: argparse.Namespace
) -> tuple[list[Result], float]:
    results: list[Result] = []
    counters = Counters()

    def record(result: Result) -> None:
        results.append(result)
        if result.error is None:
            counters.done += 1
        else:
            counters.errors += 1

    progress = asyncio.create_task(show(counters, args.duration))
    start = time.perf_counter()
    try:
        if args.concurrency is not None:
            await closed_loop(target, plan, args.concurrency, args.duration, counters, record)
        else:
            await open_loop(target, plan, counters, record)
    finally:
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
    return results, time.perf_counter() - start


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed: the client's own CPU is what limits its request rate."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    objectives = slo.parse(args.slo) if args.slo is not None else ()
    if args.plot:
        plot.check_path(args.plot)
    logs = routing.logs_dir(args.trace_dir) if args.trace_dir else None
    workload = load(args.workload)
    if args.rate is not None:
        workload = workload.with_rate(args.rate)
    target = Target(
        _base_url(args.url),
        args.model,
        ignore_eos=workload.ignore_eos,
        timeout_s=args.timeout,
        run_id=uuid.uuid4().hex[:8],
    )
    # A closed loop takes as many requests as its users have time for.
    plan = requests(workload, args.seed, None if args.concurrency else args.duration)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        results, elapsed = runner.run(_run(target, plan, args))
    summary = report.build(results, elapsed, objectives)
    print(report.text(summary))
    if logs is not None:
        summary["trace"] = routing.report(results, logs)
        print(routing.text(summary["trace"]["summary"]))
    if args.output:
        try:
            Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as err:
            raise UserError(f"--output: cannot write {args.output}: {err.strerror}") from None
    if args.plot:
        plot.write(results, args.plot, f"pdserve bench {Path(args.workload).name} at {args.url}")
    if not results:
        print("pdserve bench: no request was sent (the workload is empty)", file=sys.stderr)
    elif not summary["requests"]:
        print("pdserve bench: every request failed", file=sys.stderr)
        return 1
    return 0
