"""Service-level objectives (`--slo ttft_p90=2s,itl_p90=50ms`) and which requests meet them.

Goodput counts requests, so each objective is judged per request: its TTFT and end-to-end
latency against the bound, and for ITL the named percentile of its own inter-token gaps
(one slow token in a long answer does not fail it, a stuttering stream does). The percentile
in `ttft_p90` names the fleet target the bound belongs to; a request has one TTFT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pdserve.bench.stats import percentile
from pdserve.errors import UserError

METRICS = ("ttft", "itl", "e2e")
_KEY = re.compile(r"^(ttft|itl|e2e)_p(\d{1,2}(?:\.\d+)?)$")
_VALUE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?$")


@dataclass(frozen=True)
class Objective:
    metric: str
    percentile: float
    bound_ms: float


def parse(text: str) -> tuple[Objective, ...]:
    """`ttft_p90=2s,itl_p90=50ms`; a bare number is milliseconds."""
    objectives = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        match = _KEY.match(key.strip())
        if not sep or not match:
            raise UserError(
                f"--slo: {item!r}: expected METRIC_pNN=VALUE with METRIC one of "
                f"{', '.join(METRICS)} (e.g. ttft_p90=2s)"
            )
        amount = _VALUE.match(value.strip())
        if not amount:
            raise UserError(f"--slo: {item!r}: the value must be a duration like 2s or 50ms")
        pct = float(match.group(2))
        if not 0 < pct < 100:
            raise UserError(f"--slo: {item!r}: the percentile must be between 0 and 100")
        bound = float(amount.group(1)) * (1000.0 if amount.group(2) == "s" else 1.0)
        objectives.append(Objective(match.group(1), pct, bound))
    if not objectives:
        raise UserError("--slo: no objectives given")
    return tuple(objectives)


def met(
    objectives: tuple[Objective, ...], ttft_ms: float, itl_ms: list[float], e2e_ms: float
) -> bool:
    """Whether one completed request meets every objective."""
    for o in objectives:
        if o.metric == "ttft":
            value: float | None = ttft_ms
        elif o.metric == "e2e":
            value = e2e_ms
        else:  # one token or none: no gaps, nothing to miss
            value = percentile(itl_ms, o.percentile) if itl_ms else 0.0
        if value is None or value > o.bound_ms:
            return False
    return True
