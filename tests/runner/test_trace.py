"""The routing trace joins components' JSON log lines by the shared request id."""

from __future__ import annotations

import json
from pathlib import Path

from pdserve.runner import trace


def write(path: Path, *events: dict) -> None:
    path.write_text("not json: vLLM banner\n" + "".join(json.dumps(e) + "\n" for e in events))


def test_events_of_one_request_are_grouped_in_time_order(tmp_path: Path) -> None:
    write(
        tmp_path / "epp.log",
        {
            "ts": 1.0,
            "event": "scheduled",
            "request_id": "r1",
            "decision": "prefill-decode",
            "prefill": "127.0.0.1:1",
            "decode": "127.0.0.1:2",
        },
        {"ts": 5.0, "event": "scheduled", "request_id": "r2", "decision": "decode-only"},
    )
    write(
        tmp_path / "sidecar-0.log",
        {"ts": 2.0, "event": "request", "request_id": "r1", "kv_handle": {"engine_id": "e"}},
    )
    write(
        tmp_path / "decode-0.log",
        {"ts": 3.0, "event": "kv_pull", "request_id": "chatcmpl-x", "x_request_id": "r1"},
    )
    grouped = trace.by_request(tmp_path)
    assert list(grouped) == ["r1", "r2"]
    assert [e["_source"] for e in grouped["r1"]] == ["epp", "sidecar-0", "decode-0"]
    text = trace.render(tmp_path, last=1)
    assert "request r2" in text and "request r1" not in text
    full = trace.render(tmp_path)
    assert "decision=prefill-decode" in full and 'kv_handle={"engine_id":"e"}' in full
