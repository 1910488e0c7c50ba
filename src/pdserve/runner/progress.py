"""Showing a service's component rows as they change: a live table on a terminal,
one line per change otherwise (logs, CI, a detached `up` piped somewhere)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any


class Follower:
    """Prints component rows (dicts from the state file) as their status changes."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, str]] = {}
        self.live: Any = None
        self.rows: list[dict[str, Any]] = []
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(
                get_renderable=self._table, console=Console(stderr=True), refresh_per_second=4
            )
            self.live.start()

    def show(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        if self.live is not None:
            return
        for row in rows:
            key = (row.get("status", ""), row.get("detail", ""))
            if self.seen.get(row["name"]) != key:
                self.seen[row["name"]] = key
                detail = f"  {row['detail']}" if row.get("detail") else ""
                print(f"{row['name']:<12} {row['status']}{detail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for col in ("component", "kind", "status", "port", "restarts", "detail"):
            table.add_column(col)
        colours = {
            "ready": "green",
            "failed": "red",
            "down": "red",
            "starting": "yellow",
            "restarting": "yellow",
        }
        for row in self.rows:
            colour = colours.get(row.get("status", ""), "white")
            table.add_row(
                row["name"],
                row.get("kind", ""),
                f"[{colour}]{row.get('status', '')}[/]",
                str(row.get("port") or ""),
                _restarts(row),
                str(row.get("detail") or "")[:80],
            )
        return table


def _restarts(row: dict[str, Any]) -> str:
    """`2 (signal 9 (SIGKILL))`: how often it came back, and how it last went down."""
    if not row.get("restarts") and not row.get("last_exit"):
        return ""
    return f"{row.get('restarts', 0)} ({row.get('last_exit')})"


def pools_text(pools: dict[str, int] | None) -> str:
    """`1 prefill, 2 decode`: how a person reads replica counts."""
    return ", ".join(f"{n} {role}" for role, n in (pools or {}).items()) or "no pools"


def pdserve_command() -> str:
    """How to run this pdserve from the user's shell: `make up` does not put it on PATH."""
    here = Path(sys.executable).parent / "pdserve"
    found = shutil.which("pdserve")
    if found and Path(found).resolve() == here.resolve():
        return "pdserve"
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def print_ready(data: dict[str, Any]) -> None:
    info = data.get("summary", {})
    url = info.get("url", "")
    body = (
        f'{{"model":"{info.get("model")}","max_tokens":32,'
        '"messages":[{"role":"user","content":"What is the capital of France?"}]}'
    )
    pools = pools_text(info.get("pools"))
    print(f"ready: {info.get('name')} ({info.get('engine')} engines: {pools})")
    print(f"  OpenAI API: {url}/v1   route path: {info.get('route')}")
    if info.get("model_dir"):
        print(f"  tokenizer (for load generators): {info['model_dir']}")
    print(
        f"  try: curl -s {url}/v1/chat/completions -H 'content-type: application/json' -d '{body}'"
    )
    cmd = pdserve_command()
    state = state_flag(data)
    print(f"  then: {cmd} status{state} | {cmd} logs{state} [COMPONENT]")
    print(f"        {cmd} scale{state} prefill|decode N | {cmd} down{state}")


def state_flag(data: dict[str, Any]) -> str:
    """` --state-dir DIR` when the service is not in the default folder, so commands work."""
    from pdserve.runner.state import default_dir

    path = data.get("state_dir")
    if not path or Path(path) == default_dir().expanduser().resolve():
        return ""
    return f" --state-dir {os.path.relpath(path) if path.startswith(os.getcwd()) else path}"
