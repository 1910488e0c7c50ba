"""The routing trace joins components' log lines by the shared request id: pdserve's JSON
lines and vLLM's text lines, addresses named after the components behind them."""

from __future__ import annotations

import json
from pathlib import Path

from pdserve.runner import trace

STATE = {
    "components": [
        {"name": "prefill-0", "port": 7001},
        {"name": "decode-0", "port": 7002},
        {"name": "sidecar-0", "port": 7003},
        {"name": "epp", "port": 7004},
    ]
}
KV_HANDLE = {"engine_id": "e" * 40, "blocks": 27, "tokens": 412, "host": "127.0.0.1:5600"}


def write(path: Path, *lines: dict | str) -> None:
    path.write_text(
        "not json: a banner\n"
        + "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    )


def vllm_line(ts: str, text: str, process: str = "APIServer") -> str:
    return f"({process} pid=11) INFO {ts} [logger.py:66] {text}"


def logs(tmp_path: Path) -> Path:
    write(
        tmp_path / "epp.log",
        {
            "ts": 1.0,
            "event": "decision",
            "request_id": "r1",
            "method": "POST",
            "path": "/v1/chat/completions",
            "model": "smollm2",
            "pool": 2,
            "profiles": {
                "decode": {
                    "candidates": 1,
                    "picked": "127.0.0.1:7003",
                    "scores": {"queue-scorer": {"127.0.0.1:7003": 1.0}},
                },
                "prefill": {"candidates": 1, "picked": "127.0.0.1:7001", "scores": {}},
            },
            "decode": "127.0.0.1:7003",
            "prefill": "127.0.0.1:7001",
            "pd": "prefill-decode",
            "reason": "disaggregated: 412 uncached characters >= threshold 256",
        },
        {"ts": 5.0, "event": "decision", "request_id": "r2", "pd": "decode-only"},
    )
    write(
        tmp_path / "sidecar-0.log",
        {
            "ts": 2.0,
            "event": "request",
            "request_id": "r1",
            "outcome": "pd",
            "status": 200,
            "prefill_target": "127.0.0.1:7001",
            "kv_handle": KV_HANDLE,
        },
    )
    # vLLM's lines (engines.vllm.LOG_LINE) carry local wall time: these sort after r1's JSON
    # events, and a metrics access line joins no request.
    write(
        tmp_path / "prefill-0.log",
        'INFO:     127.0.0.1:5 - "GET /metrics HTTP/1.1" 200 OK',
        vllm_line("2999-01-01 00:00:00.000", "Received request chatcmpl-r10-aa: params: x"),
        vllm_line("2999-01-01 00:00:00.000", "Received request chatcmpl-r1-0a1b: params: y"),
    )
    write(
        tmp_path / "decode-0.log",
        vllm_line(
            "2999-01-01 00:00:00.500",
            "start_load_kv for request chatcmpl-r1-ffee from remote engine eee",
            "EngineCore",
        ),
    )
    return tmp_path


def test_events_of_one_request_are_grouped_with_vllm_lines(tmp_path: Path) -> None:
    grouped = trace.by_request(logs(tmp_path))
    assert list(grouped) == ["r1", "r2"]
    r1 = grouped["r1"]
    assert [e["_source"] for e in r1] == ["epp", "sidecar-0", "prefill-0", "decode-0"]
    # The longest id wins: chatcmpl-r10-... belongs to no traced request, not to r1.
    assert [e["message"] for e in r1 if e["_source"] == "prefill-0"] == [
        "Received request chatcmpl-r1-0a1b: params: y"
    ]
    assert r1[-1]["process"] == "EngineCore"


def test_render_names_components_and_keeps_every_field_whole(tmp_path: Path) -> None:
    text = trace.render(logs(tmp_path), state=STATE, width=80)
    block = text.split("request r2")[0]
    assert block.splitlines()[0] == (
        "request r1  POST /v1/chat/completions  model=smollm2  -> pd 200"
    )
    assert "127.0.0.1:70" not in block
    flat = " ".join(line.strip() for line in block.splitlines())
    assert "reason=disaggregated: 412 uncached characters >= threshold 256" in flat
    assert "decode=decode-0 prefill=prefill-0" in flat
    assert "profile decode: 1 candidate, picked decode-0; queue-scorer decode-0=1" in flat
    assert "prefill_target=prefill-0" in flat
    # Wrapped, not cut: the whole handle is there once the wrap is undone.
    unwrapped = "".join(line.strip() for line in block.splitlines())
    assert json.dumps(KV_HANDLE, separators=(",", ":")).replace(" ", "") in unwrapped.replace(
        " ", ""
    )
    assert "..." not in block
    assert all(len(line) <= 80 for line in block.splitlines())
    assert "EngineCore: start_load_kv for request chatcmpl-r1-ffee" in flat


def test_last_and_json(tmp_path: Path) -> None:
    text = trace.render(logs(tmp_path), last=1, state=STATE)
    assert "request r2" in text and "request r1" not in text
    rows = [json.loads(line) for line in trace.render_json(tmp_path, state=STATE).splitlines()]
    assert [r["request_id"] for r in rows] == ["r1", "r2"]
    assert rows[0]["events"][1]["kv_handle"] == KV_HANDLE
    assert [e["source"] for e in rows[0]["events"]][:2] == ["epp", "sidecar-0"]
    assert rows[0]["components"]["127.0.0.1:7003"] == "decode-0"
