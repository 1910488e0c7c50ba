"""`pdserve simulate FILE --workload W`: the fleet FILE describes, under the workload, in
virtual time; prints bench's summary and writes bench's report keys (--output)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pdserve.bench import report
from pdserve.bench.workload import load as load_workload
from pdserve.errors import UserError
from pdserve.flags import OneLineParser, number

if TYPE_CHECKING:
    from pdserve.simulate.simulator import Counts, Progress


def parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="pdserve simulate",
        description="Simulate a manifest's fleet (EPP, prefill and decode engines) under a "
        "workload in virtual time: same seed, same report.",
        epilog="The report has bench's keys: ttft_ms, itl_ms, e2e_ms (p50, p90, p99), "
        "requests_per_s, output_tokens_per_s, errors, goodput, requests, duration_s "
        "(virtual), and classes (per label) for a labelled replay trace. KV link parameters "
        "default to the profile's pull model (kv_pull_overhead_ms, kv_pull_ms_per_token).",
    )
    ap.add_argument("file", type=Path, help="an LLMInferenceService manifest (as for pdserve up)")
    ap.add_argument("--workload", required=True, help="a workload YAML file (as for bench)")
    ap.add_argument(
        "--profile",
        help="sim engine profile YAML for every engine (default: the manifest's engine "
        "--profile if it gives one, else the sim engine's defaults)",
    )
    ap.add_argument(
        "--prefill-profile",
        help="the prefill pool's profile, when its engines differ from the decode pool's "
        "(default: --profile's)",
    )
    ap.add_argument("--seed", type=int, default=0, help="the workload's and the EPP's seed")
    ap.add_argument("--duration", type=number(float), help="seconds of arrivals (virtual)")
    ap.add_argument("--requests", type=number(int), help="or this many requests")
    ap.add_argument("--rate", type=number(float), help="requests/s, overriding the workload's")
    ap.add_argument("--output", help="write the report as JSON here")
    ap.add_argument("--slo", help="objectives for goodput, e.g. ttft_p90=2s,itl_p90=50ms")
    ap.add_argument(
        "--scrape-interval",
        type=number(float),
        default=0.05,
        help="seconds between the EPP's metric scrapes (its --refresh-metrics-interval)",
    )
    ap.add_argument(
        "--link-latency-ms", type=number(float, 0.0, inclusive=True), help="KV pull fixed cost"
    )
    ap.add_argument("--link-gbps", type=number(float), help="KV link bandwidth, GB/s")
    ap.add_argument(
        "--kv-bytes-per-token", type=number(int), help="model KV bytes per token (128 KiB)"
    )
    return ap


def main(argv: list[str]) -> int:
    from pdserve.bench import slo
    from pdserve.simulate.fleet import load_fleet
    from pdserve.simulate.link import make_link
    from pdserve.simulate.simulator import Options, Simulation

    args = parser().parse_args(argv[1:])
    if not args.file.is_file():
        raise UserError(f"{args.file}: no such file")
    objectives = slo.parse(args.slo) if args.slo is not None else ()
    workload = load_workload(args.workload)
    if args.rate is not None:
        workload = workload.with_rate(args.rate)
    if workload.replay is None and args.duration is None and args.requests is None:
        raise UserError("give --duration or --requests (the workload's arrivals never end)")
    fleet = load_fleet(args.file, args.profile, prefill_profile_path=args.prefill_profile)
    if fleet.tokenizer_dir is None:
        print(
            f"pdserve simulate: {fleet.plan.model_uri} has no tokenizer here (not cached): "
            "prompts are counted with the built-in one (`pdserve up` caches the model's)",
            file=sys.stderr,
        )
    decode_profile = fleet.pools[-1].profile
    link = make_link(decode_profile, args.link_latency_ms, args.link_gbps, args.kv_bytes_per_token)
    options = Options(args.seed, args.duration, args.requests, args.scrape_interval, ahead=True)
    sim = Simulation(fleet, workload, options, link)
    started = time.perf_counter()
    results, elapsed = sim.run(_progress(sys.stderr, started))
    summary = report.build(results, elapsed, objectives)
    print(report.text(summary))
    wall = time.perf_counter() - started
    print(
        f"simulated {len(results)} requests on {fleet.engines} engines in {wall:.1f} s",
        file=sys.stderr,
    )
    if args.output:
        try:
            Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as err:
            raise UserError(f"--output: cannot write {args.output}: {err.strerror}") from None
    if results and not summary["requests"]:
        print("pdserve simulate: every request failed", file=sys.stderr)
        return 1
    return 0


def _progress(stream: TextIO, started: float) -> Progress:
    """A status line on stderr: once a second, redrawn in place, on a terminal; in a log
    every 5 s (as bench's), so a long simulation shows it is alive without flooding it."""
    tty = stream.isatty()
    every = 1.0 if tty else 5.0
    shown = [started]

    def show(c: Counts) -> None:
        now = time.perf_counter()
        if now - shown[0] < every:
            return
        shown[0] = now
        line = (
            f"simulate {now - started:5.0f} s  virtual {c.now:.1f} s  "
            f"arrived {c.arrived}  done {c.done}  in flight {c.live}"
        )
        stream.write(f"\r{line}\033[K" if tty else line + "\n")
        stream.flush()

    return show
