"""`pdserve bench --trace-dir STATE`: each request's routing, from a `pdserve up` state folder.

bench sends its own x-request-id, which pdserve's components log under (runner/trace.py
groups their lines by it), so after a run each request's lines say what the service did:
the EPP's P/D decision and its reason (`decision`), how long the sidecar's prefill leg took
and how many prompt tokens the prefiller had cached (the sidecar's `request` line), how long
the decode engine's KV pull took (the sim engine's `kv_pull`; vLLM logs no such line, so it
is null there), and the engines' own cache hits (the sim engine's `request_done`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pdserve.bench.client import Result
from pdserve.bench.stats import percentile
from pdserve.errors import UserError

Events = list[dict[str, Any]]
# The sidecar logs a request once its answer is sent: its line can land after the client
# has read the last byte. How long to wait for the stragglers.
SETTLE_S = 10.0


def logs_dir(state: str) -> Path:
    """Checked before the run, as a bad --output would be only after it."""
    from pdserve.runner.state import StateDir

    logs = StateDir(Path(state)).logs
    if not logs.is_dir():
        raise UserError(f"--trace-dir: {state} is not a pdserve up state folder (no logs/)")
    return logs


def collect(logs: Path, ids: Sequence[str], settle_s: float = SETTLE_S) -> dict[str, Events]:
    """The events of each of `ids`, once every routed one has its sidecar line (or
    `settle_s` has passed: a service without sidecars never logs one)."""
    from pdserve.runner.trace import by_request

    wanted = set(ids)
    deadline = time.monotonic() + settle_s
    while True:
        grouped = {k: v for k, v in by_request(logs).items() if k in wanted}
        if all(_settled(e) for e in grouped.values()) or time.monotonic() >= deadline:
            return grouped
        time.sleep(0.2)


def _settled(events: Events) -> bool:
    return _decision(events) is None or _sidecar(events) is not None


def row(result: Result, events: Events) -> dict[str, Any]:
    """One request: what the client measured, then what the service logged about it."""
    decision = _decision(events) or {}
    sidecar = _sidecar(events) or {}
    pulls = [e["ms"] for e in events if e.get("event") == "kv_pull" and "ms" in e]
    done = {e.get("pd_role"): e for e in events if e.get("event") == "request_done"}
    engine = done.get("producer") or done.get("local") or done.get("consumer") or {}
    pd = decision.get("pd")
    cached = sidecar.get("cached_tokens")
    if cached is None and ("producer" in done or "local" in done):
        cached = engine.get("cached_tokens")
    return {
        "request_id": result.request_id,
        "error": result.error,
        "ttft_ms": _ms(result.ttft_ms),
        "e2e_ms": _ms(result.e2e_ms),
        "pd": "pd" if pd == "prefill-decode" else pd,
        "reason": decision.get("reason"),
        "outcome": _outcome(sidecar),
        "prefill_ms": sidecar.get("prefill_ms"),
        "kv_pull_ms": _ms(sum(pulls)) if pulls else None,
        "cached_tokens": cached,
        "prompt_tokens": engine.get("prompt_tokens"),
    }


def _decision(events: Events) -> dict[str, Any] | None:
    return next((e for e in events if e.get("event") == "decision"), None)


def _sidecar(events: Events) -> dict[str, Any] | None:
    """The sidecar's last word on a request: its `request` line, or the line saying the
    client left first."""
    return next(
        (
            e
            for e in events
            if e.get("component") == "sidecar"
            and e.get("event") in ("request", "client_disconnected")
        ),
        None,
    )


def _outcome(sidecar: dict[str, Any]) -> str | None:
    if sidecar.get("event") == "client_disconnected":
        return "client-disconnected"
    return sidecar.get("outcome")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts of each P/D decision, median prefill and KV pull times, and the share of
    prompt tokens that were cache hits (over the requests whose engine reported both)."""
    traced = [r for r in rows if r["pd"] is not None]
    hits = [r for r in traced if r["cached_tokens"] is not None and r["prompt_tokens"]]
    prompt = sum(r["prompt_tokens"] for r in hits)

    def median(key: str) -> float | None:
        value = percentile([r[key] for r in traced if r[key] is not None], 50)
        return _ms(value)

    return {
        "traced": len(traced),
        "untraced": len(rows) - len(traced),
        "pd": sum(1 for r in traced if r["pd"] == "pd"),
        "decode_only": sum(1 for r in traced if r["pd"] == "decode-only"),
        "prefill_ms_p50": median("prefill_ms"),
        "kv_pull_ms_p50": median("kv_pull_ms"),
        "cached_tokens": sum(r["cached_tokens"] for r in hits),
        "prompt_tokens": prompt,
        "cache_hit_rate": round(sum(r["cached_tokens"] for r in hits) / prompt, 4)
        if prompt
        else None,
    }


def text(s: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    rate = s["cache_hit_rate"]
    hit = "-" if rate is None else f"{rate:.1%} of {s['prompt_tokens']} prompt tokens"
    line = (
        f"trace    {s['traced']} requests: {s['pd']} P/D, {s['decode_only']} decode-only; "
        f"prefill p50 {ms(s['prefill_ms_p50'])}, KV pull p50 {ms(s['kv_pull_ms_p50'])}; "
        f"cache hits {hit}"
    )
    return line + (f"; {s['untraced']} not in the logs" if s["untraced"] else "")


def report(results: Sequence[Result], logs: Path, settle_s: float = SETTLE_S) -> dict[str, Any]:
    """The report's `trace`: its summary and one row per request, in the order sent."""
    ordered = sorted(results, key=lambda r: r.planned.index)
    grouped = collect(logs, [r.request_id for r in ordered], settle_s)
    rows = [row(r, grouped.get(r.request_id, [])) for r in ordered]
    return {"summary": summary(rows), "requests": rows}
