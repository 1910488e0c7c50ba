"""--trace-dir joins bench's requests to what the EPP, sidecar and sim engines logged under
their ids: decision and reason, prefill and KV pull times, cache hits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from pdserve.bench import routing
from pdserve.bench.client import Result
from pdserve.bench.generator import PlannedRequest
from pdserve.errors import UserError

PD = "disaggregated: 700 uncached characters >= threshold 256"
LOCAL = "decode-only: 90 uncached characters < threshold 256"


def result(index: int) -> Result:
    planned = PlannedRequest(index, 0.1 * index, max_tokens=4, input_tokens=8, prompt="x")
    return Result(planned, 0.1 * index, ttft_ms=20.0, e2e_ms=50.0, request_id=f"bench-t-{index}")


def write(path: Path, *lines: dict[str, Any]) -> None:
    path.write_text("a banner, not JSON\n" + "".join(json.dumps(x) + "\n" for x in lines))


def state(tmp_path: Path) -> Path:
    """bench-t-0 went P/D, bench-t-1 decode-only, bench-t-2 never reached the service, and
    someone else's request shares the logs."""
    logs = tmp_path / "logs"
    logs.mkdir()
    sim = {"component": "sim-engine", "event": "request_done"}
    write(
        logs / "epp.log",
        *(
            {
                "ts": t,
                "component": "epp",
                "event": "decision",
                "request_id": rid,
                "pd": pd,
                "reason": why,
            }
            for t, rid, pd, why in [
                (1.0, "bench-t-0", "prefill-decode", PD),
                (2.0, "bench-t-1", "decode-only", LOCAL),
                (3.0, "curl-1", "decode-only", LOCAL),
            ]
        ),
    )
    write(
        logs / "sidecar-0.log",
        {
            "ts": 1.5,
            "component": "sidecar",
            "event": "request",
            "request_id": "bench-t-0",
            "outcome": "pd",
            "cached_tokens": 64,
            "prefill_ms": 30.5,
            "decode_ms": 80.0,
        },
        {
            "ts": 2.5,
            "component": "sidecar",
            "event": "request",
            "request_id": "bench-t-1",
            "outcome": "decode-only",
            "ms": 40.0,
        },
    )
    write(
        logs / "prefill-0.log",
        {
            **sim,
            "ts": 1.1,
            "x_request_id": "bench-t-0",
            "request_id": "chatcmpl-bench-t-0-1",
            "pd_role": "producer",
            "prompt_tokens": 160,
            "cached_tokens": 64,
        },
    )
    write(
        logs / "decode-0.log",
        {
            "ts": 1.2,
            "component": "sim-engine",
            "event": "kv_pull",
            "x_request_id": "bench-t-0",
            "request_id": "chatcmpl-bench-t-0-2",
            "ok": True,
            "ms": 12.25,
        },
        {
            **sim,
            "ts": 1.4,
            "x_request_id": "bench-t-0",
            "request_id": "chatcmpl-bench-t-0-2",
            "pd_role": "consumer",
            "prompt_tokens": 160,
            "cached_tokens": 0,
        },
        {
            **sim,
            "ts": 2.4,
            "x_request_id": "bench-t-1",
            "request_id": "chatcmpl-bench-t-1-3",
            "pd_role": "local",
            "prompt_tokens": 40,
            "cached_tokens": 16,
        },
    )
    return tmp_path


def test_rows_and_summary_from_the_logs(tmp_path: Path) -> None:
    logs = routing.logs_dir(str(state(tmp_path)))
    trace = routing.report([result(2), result(1), result(0)], logs, settle_s=0)
    rows = trace["requests"]
    assert [r["request_id"] for r in rows] == ["bench-t-0", "bench-t-1", "bench-t-2"]
    assert rows[0] == {
        "request_id": "bench-t-0",
        "error": None,
        "ttft_ms": 20.0,
        "e2e_ms": 50.0,
        "pd": "pd",
        "reason": PD,
        "outcome": "pd",
        "prefill_ms": 30.5,
        "kv_pull_ms": 12.25,
        "cached_tokens": 64,  # the prefiller's hits, not the decode engine's
        "prompt_tokens": 160,
    }
    assert (rows[1]["pd"], rows[1]["reason"], rows[1]["outcome"]) == (
        "decode-only",
        LOCAL,
        "decode-only",
    )
    assert (rows[1]["prefill_ms"], rows[1]["kv_pull_ms"], rows[1]["cached_tokens"]) == (
        None,
        None,
        16,
    )
    assert rows[2]["pd"] is None and rows[2]["reason"] is None
    assert trace["summary"] == {
        "traced": 2,
        "untraced": 1,
        "pd": 1,
        "decode_only": 1,
        "prefill_ms_p50": 30.5,
        "kv_pull_ms_p50": 12.25,
        "cached_tokens": 80,
        "prompt_tokens": 200,
        "cache_hit_rate": 0.4,
    }
    assert routing.text(trace["summary"]) == (
        "trace    2 requests: 1 P/D, 1 decode-only; prefill p50 30.5 ms, KV pull p50 12.2 ms; "
        "cache hits 40.0% of 200 prompt tokens; 1 not in the logs"
    )


def test_a_client_that_left_early_is_settled(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write(
        logs / "epp.log",
        {"ts": 1.0, "event": "decision", "request_id": "bench-t-0", "pd": "decode-only"},
    )
    write(
        logs / "sidecar-0.log",
        {
            "ts": 1.1,
            "component": "sidecar",
            "event": "client_disconnected",
            "request_id": "bench-t-0",
        },
    )
    start = time.monotonic()
    trace = routing.report([result(0)], logs, settle_s=30)
    assert time.monotonic() - start < 10  # settled: no wait for a line that never comes
    assert trace["requests"][0]["outcome"] == "client-disconnected"


def test_not_a_state_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a pdserve up state folder"):
        routing.logs_dir(str(tmp_path))
