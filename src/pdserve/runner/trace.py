"""The routing trace: per request, what each component logged about it.

pdserve's components log JSON lines carrying the request id (the EPP's decision
and its reason, the sidecar's prefill target, KV handle and outcome, the sim
engine's KV pulls); vLLM logs text lines that name its request ids, which embed
the caller's x-request-id (`chatcmpl-<id>`). Grouping both by request id across
one run's logs answers "where did this request go, and why?" without knowing
each component's event names. Addresses are shown as the component behind them
(the state file's ports), the EPP's decode pick as the decode engine its sidecar
fronts, as a pod would be named in a cluster.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pdserve.engines import vllm

ID_KEYS = ("x_request_id", "request_id", "x-request-id", "requestId")
NOISE = {"ts", "level", "component", "event", *ID_KEYS}
# The EPP's decision fields, in the order a person asks about them.
DECISION_FIRST = ("reason", "decode", "prefill", "pd")
_IN_HEADLINE = {"method", "path", "model"}

_ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")


def events(logs: Path) -> Iterator[dict[str, Any]]:
    """Every structured line in a run's logs: pdserve's JSON, vLLM's text lines parsed."""
    for path in sorted(logs.glob("*.log")):
        with open(path, errors="replace") as f:
            for line in f:
                item = _parse(line.rstrip("\n"))
                if item is not None:
                    item.setdefault("component", path.stem)
                    item["_source"] = path.stem
                    yield item


def _parse(line: str) -> dict[str, Any] | None:
    if line.startswith("{"):
        try:
            item = json.loads(line)
        except ValueError:
            return None
        return item if isinstance(item, dict) else None
    item = vllm.parse_log_line(line)
    return None if item is None else {**item, "event": "vllm"}


def by_request(logs: Path) -> dict[str, list[dict[str, Any]]]:
    """Events grouped by request id, requests in the order they arrived."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    text_lines: list[dict[str, Any]] = []
    for item in events(logs):
        rid = next((item[k] for k in ID_KEYS if item.get(k)), None)
        if rid:
            grouped[str(rid)].append(item)
        elif item.get("event") == "vllm":
            text_lines.append(item)
    _join_text_lines(grouped, text_lines)
    for items in grouped.values():
        items.sort(key=lambda e: e.get("ts", 0))
    return dict(sorted(grouped.items(), key=lambda kv: kv[1][0].get("ts", 0)))


def _join_text_lines(grouped: dict[str, list[dict[str, Any]]], lines: list[dict[str, Any]]) -> None:
    """A vLLM line belongs to the request whose id it contains as a whole word: vLLM writes
    `chatcmpl-<id>` and appends `-<suffix>` internally, so r1 must not claim r10's lines."""
    if not grouped or not lines:
        return
    ids = sorted(grouped, key=len, reverse=True)
    alternatives = "|".join(re.escape(i) for i in ids)
    pattern = re.compile(f"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])")
    for line in lines:
        found = pattern.search(line["message"])
        if found:
            grouped[found.group()].append(line)


def names(state: dict[str, Any] | None) -> dict[str, str]:
    """127.0.0.1:PORT -> component name, from a state file's component rows. A sidecar's
    port is named after the decode engine behind it: that is the endpoint the EPP picks."""
    out: dict[str, str] = {}
    for row in (state or {}).get("components", []):
        name, port = row.get("name", ""), row.get("port")
        if not port:
            continue
        if name.startswith("sidecar-"):
            name = "decode-" + name.removeprefix("sidecar-")
        out[f"127.0.0.1:{port}"] = name
    return out


def requests(logs: Path, last: int | None = None) -> list[tuple[str, list[dict[str, Any]]]]:
    grouped = list(by_request(logs).items())
    return grouped[-last:] if last else grouped


def render(
    logs: Path, last: int | None = None, state: dict[str, Any] | None = None, width: int = 0
) -> str:
    """The trace for a person: one block per request, every field whole, lines wrapped."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    named = names(state)
    blocks = [_block(rid, items, named, width) for rid, items in requests(logs, last)]
    return "\n".join(blocks)


def render_json(logs: Path, last: int | None = None, state: dict[str, Any] | None = None) -> str:
    """One JSON object per request and line: its events as logged (with the log they came
    from as `source`), and the address names."""
    named = names(state)
    out = []
    for rid, items in requests(logs, last):
        cleaned = [
            {"source": e["_source"], **{k: v for k, v in e.items() if k != "_source"}}
            for e in items
        ]
        out.append(json.dumps({"request_id": rid, "events": cleaned, "components": named}))
    return "\n".join(out)


def _block(rid: str, items: list[dict[str, Any]], named: dict[str, str], width: int) -> str:
    lines = [_headline(rid, items, named)]
    for item in items:
        head = f"  {item['_source']:<11} {item.get('event', '')}"
        for i, text in enumerate(_body(item, named)):
            lines += _wrap(head if i == 0 else "", text, width)
    return "\n".join(lines)


def _headline(rid: str, items: list[dict[str, Any]], named: dict[str, str]) -> str:
    first = next((e for e in items if e.get("event") == "decision"), {})
    parts = [f"request {rid}"]
    if first.get("method") or first.get("path"):
        parts.append(f"{first.get('method') or ''} {first.get('path') or ''}".strip())
    if first.get("model"):
        parts.append(f"model={first['model']}")
    outcome = _outcome(items)
    if outcome:
        parts.append(f"-> {outcome}")
    return "  ".join(parts)


def _outcome(items: list[dict[str, Any]]) -> str | None:
    """What the client got, from the last component that says so."""
    for item in reversed(items):
        if item.get("event") == "request" and "status" in item:
            return f"{item.get('outcome', '')} {item['status']}".strip()
        if item.get("event") in ("request_done", "request_aborted"):
            return str(item["event"]).removeprefix("request_")
        if item.get("event") == "vllm" and "Aborted request" in item.get("message", ""):
            return "aborted"
    return None


def _body(item: dict[str, Any], named: dict[str, str]) -> list[str]:
    """The text lines of one event: vLLM's message; else key=value, the reason first and
    each EPP profile on a line of its own."""
    if item.get("event") == "vllm":
        return [_name(f"{item['process']}: {item['message']}", named)]
    shown = NOISE | _IN_HEADLINE if item.get("event") == "decision" else NOISE
    fields = {k: v for k, v in item.items() if k not in shown and not k.startswith("_")}
    profiles = fields.pop("profiles", None)
    ordered = [k for k in DECISION_FIRST if k in fields] + [
        k for k in fields if k not in DECISION_FIRST
    ]
    out = [" ".join(f"{k}={_text(fields[k], named)}" for k in ordered if fields[k] is not None)]
    for profile, run in (profiles or {}).items():
        out.append(_profile(profile, run, named))
    return out


def _profile(name: str, run: dict[str, Any], named: dict[str, str]) -> str:
    count = run.get("candidates", 0)
    picked = _name(str(run.get("picked")), named) if run.get("picked") else "none"
    scores = "; ".join(
        f"{scorer} " + " ".join(f"{_name(e, named)}={s:g}" for e, s in per.items())
        for scorer, per in (run.get("scores") or {}).items()
    )
    text = f"profile {name}: {count} candidate{'s' * (count != 1)}, picked {picked}"
    return f"{text}; {scores}" if scores else text


def _text(value: Any, named: dict[str, str]) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return _name(text, named)


def _name(text: str, named: dict[str, str]) -> str:
    return _ADDRESS.sub(lambda m: named.get(m.group(), m.group()), text)


def _wrap(head: str, text: str, width: int) -> list[str]:
    """`head` then `text`, wrapped under itself; nothing cut (long tokens are broken)."""
    indent = " " * 23
    first = f"{head:<22} " if head else indent
    return textwrap.wrap(
        text,
        width=max(width, 60),
        initial_indent=first,
        subsequent_indent=indent,
        break_on_hyphens=False,
    ) or [first.rstrip()]
