"""The report: the keys `pdserve bench --output` writes, and the simulator will write too.

Only successful requests enter the latency and throughput figures; failed ones are counted
under `errors` by kind, so a run that sheds load shows it there instead of looking fast.
When a replay trace labels its requests, `classes` gives each label's latencies as well: a
mix of two kinds of request has a bimodal distribution whose overall median describes
neither kind. Without labels the report has exactly `KEYS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pdserve.bench import slo
from pdserve.bench.client import Result
from pdserve.bench.stats import summary

KEYS = (
    "ttft_ms",
    "itl_ms",
    "e2e_ms",
    "requests_per_s",
    "output_tokens_per_s",
    "errors",
    "goodput",
    "requests",
    "duration_s",
)


def build(
    results: Sequence[Result],
    duration_s: float,
    objectives: tuple[slo.Objective, ...] = (),
) -> dict[str, Any]:
    """`requests` counts the successful requests; `goodput` is those meeting every
    objective per second (all of them without objectives)."""
    ok = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error is not None)
    span = max(duration_s, 1e-9)
    good = sum(1 for r in ok if not objectives or slo.met(objectives, _ttft(r), r.itl_ms, r.e2e_ms))
    built: dict[str, Any] = {
        **_latencies(ok),
        "requests_per_s": round(len(ok) / span, 3),
        "output_tokens_per_s": round(sum(r.output_tokens for r in ok) / span, 3),
        "errors": dict(sorted(errors.items())),
        "goodput": round(good / span, 3),
        "requests": len(ok),
        "duration_s": round(duration_s, 3),
    }
    if any(r.planned.label is not None for r in results):
        built["classes"] = _classes(results)
    return built


def _latencies(ok: Sequence[Result]) -> dict[str, dict[str, float | None]]:
    return {
        "ttft_ms": summary([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "itl_ms": summary([gap for r in ok for gap in r.itl_ms]),
        "e2e_ms": summary([r.e2e_ms for r in ok]),
    }


def _classes(results: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Per label, the same figures over the same (successful) requests as the whole run's.
    Unlabelled requests are in no class: an unnamed remainder would read as a class the
    trace never declared. A label whose requests all failed is still listed, with nothing
    measured (as an all-failed run's figures are), so a reader of `classes.x` finds it."""
    by_label: dict[str, list[Result]] = {}
    for r in results:
        if r.planned.label is not None:
            by_label.setdefault(r.planned.label, [])
            if r.error is None:
                by_label[r.planned.label].append(r)
    return {
        label: {**_latencies(ok), "requests": len(ok)} for label, ok in sorted(by_label.items())
    }


def text(report: dict[str, Any]) -> str:
    """The human summary printed at the end of a run."""

    def row(name: str) -> str:
        s = report[name]
        cells = "  ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in s.items())
        return f"{name:<8} {cells}"

    errors = ", ".join(f"{k} {v}" for k, v in report["errors"].items()) or "none"
    classes = [_class_row(label, c) for label, c in report.get("classes", {}).items()]
    return "\n".join(
        [
            f"requests {report['requests']} in {report['duration_s']:.1f} s: "
            f"{report['requests_per_s']:.2f} req/s, "
            f"{report['output_tokens_per_s']:.1f} output tok/s, "
            f"goodput {report['goodput']:.2f} req/s",
            row("ttft_ms"),
            row("itl_ms"),
            row("e2e_ms"),
            f"errors   {errors}",
            *classes,
        ]
    )


def _class_row(label: str, figures: dict[str, Any]) -> str:
    def cell(name: str) -> str:
        s = figures[name]
        return " ".join(f"{p} {'-' if s[p] is None else f'{s[p]:.1f}'}" for p in ("p50", "p90"))

    return (
        f"class {label}: {figures['requests']} requests, "
        f"ttft_ms {cell('ttft_ms')}, itl_ms {cell('itl_ms')}"
    )


def _ttft(result: Result) -> float:
    """A request that streamed no content (max_tokens 0) has its first token at the end."""
    return result.e2e_ms if result.ttft_ms is None else result.ttft_ms
