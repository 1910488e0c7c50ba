"""The routing trace: per request, what each component logged about it.

Components log JSON lines carrying `request_id` (EPP decision and picks, the
sidecar's prefill target, KV handle and decode call, the sim engine's KV
pulls). Grouping them by request id across the state folder's logs answers
"where did this request go?" without knowing each component's event names.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ID_KEYS = ("x_request_id", "request_id", "x-request-id", "requestId")
NOISE = {"ts", "level", "component", "event", *ID_KEYS}


def events(logs: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(logs.glob("*.log")):
        with open(path, errors="replace") as f:
            for line in f:
                if not line.startswith("{"):
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict):
                    item.setdefault("component", path.stem)
                    item["_source"] = path.stem
                    yield item


def by_request(logs: Path) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in events(logs):
        rid = next((item[k] for k in ID_KEYS if item.get(k)), None)
        if rid:
            grouped[str(rid)].append(item)
    for items in grouped.values():
        items.sort(key=lambda e: e.get("ts", 0))
    return dict(sorted(grouped.items(), key=lambda kv: kv[1][0].get("ts", 0)))


def render(logs: Path, last: int | None = None) -> str:
    grouped = by_request(logs)
    keys = list(grouped)[-last:] if last else list(grouped)
    lines: list[str] = []
    for rid in keys:
        lines.append(f"request {rid}")
        for item in grouped[rid]:
            fields = " ".join(
                f"{k}={_short(v)}"
                for k, v in item.items()
                if k not in NOISE and not k.startswith("_")
            )
            lines.append(f"  {item['_source']:<12} {item.get('event', '')}: {fields}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."
