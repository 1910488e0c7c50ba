"""`pdserve bench --plot`: one PNG of a run, latency over time, latency CDFs, throughput.

The series are computed here without matplotlib, so what is drawn can be tested against the
results; matplotlib is imported only to draw (it takes about a second to import, which a
run without --plot should not pay), with the Agg backend: no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdserve.bench.client import Result
from pdserve.errors import UserError


@dataclass
class Series:
    """Times are seconds since the run started; latencies ms; `per_second` bins are
    [i, i+1) seconds. Tokens are counted when their chunk arrived, requests when done."""

    ttft: list[tuple[float, float]] = field(default_factory=list)  # (sent, ms)
    e2e: list[tuple[float, float]] = field(default_factory=list)  # (sent, ms)
    itl: list[tuple[float, float]] = field(default_factory=list)  # (chunk arrived, gap ms)
    errors: list[float] = field(default_factory=list)  # when each failed request ended
    requests_per_s: list[int] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)


def chunk_times(result: Result) -> list[float]:
    """When each content chunk arrived: the first at TTFT, each next one gap later."""
    if result.ttft_ms is None:
        return []
    t = result.sent_s + result.ttft_ms / 1000.0
    times = [t]
    for gap in result.itl_ms:
        t += gap / 1000.0
        times.append(t)
    return times


def series(results: Sequence[Result]) -> Series:
    out = Series()
    ends = [r.sent_s + r.e2e_ms / 1000.0 for r in results]
    bins = math.ceil(max(ends, default=0.0)) or 1
    out.requests_per_s = [0] * bins
    out.tokens_per_s = [0.0] * bins
    for result, end in zip(results, ends, strict=True):
        if result.error is not None:
            out.errors.append(end)
            continue
        out.e2e.append((result.sent_s, result.e2e_ms))
        out.requests_per_s[_bin(end, bins)] += 1
        times = chunk_times(result)
        if result.ttft_ms is not None:
            out.ttft.append((result.sent_s, result.ttft_ms))
        out.itl.extend(zip(times[1:], result.itl_ms, strict=True))
        # usage's token count, spread over the chunks that carried them (a chunk may hold
        # more than one token); an answer with no content chunk counts at its end.
        weight = result.output_tokens / len(times) if times else 0.0
        for t in times:
            out.tokens_per_s[_bin(t, bins)] += weight
        if not times and result.output_tokens:
            out.tokens_per_s[_bin(end, bins)] += result.output_tokens
    return out


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values and the fraction of values at or below each."""
    ordered = sorted(values)
    n = len(ordered)
    return ordered, [(i + 1) / n for i in range(n)]


def _bin(t: float, bins: int) -> int:
    return min(max(int(t), 0), bins - 1)


def check_path(path: str) -> None:
    """Before the run, not after it: a typo must not cost a whole benchmark."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise UserError(f"--plot: expected a .png file, got {path!r}")
    if not target.parent.is_dir():
        raise UserError(f"--plot: no such folder {str(target.parent)!r}")


def write(results: Sequence[Result], path: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'pdserve[bench]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    data = series(results)
    fig, axes = pyplot.subplots(2, 2, figsize=(13, 8.5))
    fig.suptitle(title)
    _latency(axes[0][0], data)
    _itl(axes[0][1], data)
    _cdfs(axes[1][0], data)
    _throughput(axes[1][1], data)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise UserError(f"--plot: cannot write {path}: {err.strerror}") from None
    finally:
        pyplot.close(fig)


def _latency(ax: Any, data: Series) -> None:
    for name, points, marker in (("e2e", data.e2e, "."), ("TTFT", data.ttft, "x")):
        if points:
            ax.scatter(*zip(*points, strict=True), s=8, marker=marker, label=name)
    if data.errors:
        ax.scatter(data.errors, [0] * len(data.errors), s=16, c="red", marker="|", label="error")
    ax.set(title="latency by send time", xlabel="s since start", ylabel="ms")
    _legend(ax, loc="upper left")


def _legend(ax: Any, loc: str) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty run draws none
        ax.legend(loc=loc)


def _itl(ax: Any, data: Series) -> None:
    if data.itl:
        ax.scatter(*zip(*data.itl, strict=True), s=3, alpha=0.5)
    ax.set(title="inter-token latency by arrival", xlabel="s since start", ylabel="ms")


def _cdfs(ax: Any, data: Series) -> None:
    for name, points in (("TTFT", data.ttft), ("ITL", data.itl), ("e2e", data.e2e)):
        if points:
            ax.step(*cdf([ms for _, ms in points]), where="post", label=name)
    ax.set(title="latency CDF", xlabel="ms (log)", ylabel="fraction at or below")
    if data.e2e:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")  # ITL and e2e are orders of magnitude apart
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    _legend(ax, loc="lower right")


def _throughput(ax: Any, data: Series) -> None:
    edges = range(len(data.requests_per_s) + 1)
    ax.stairs(data.requests_per_s, edges, label="requests/s (done)")
    ax.set(title="throughput per second", xlabel="s since start", ylabel="requests/s")
    tokens = ax.twinx()
    tokens.stairs(data.tokens_per_s, edges, color="tab:orange", label="output tokens/s")
    tokens.set_ylabel("output tokens/s")
    ax.set_ylim(bottom=0)
    tokens.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = tokens.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
