"""Progress of a local service: one row per component, shown live and saved.

The same rows feed the terminal (progress.Follower while `up` runs in the
foreground) and the state file (read by a detached `up` waiting for readiness,
and by `pdserve status`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    name: str
    kind: str
    status: str = "pending"
    detail: str = ""
    pid: int | None = None
    port: int | None = None
    log: str | None = None
    restarts: int = 0
    last_exit: str | None = None  # `code 1` or `signal 9 (SIGKILL)`: why it last went down
    since: float = field(default_factory=time.monotonic)


class Board:
    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.rows: dict[str, Row] = {}
        self.on_change = on_change
        self.lock = threading.RLock()

    def set(self, name: str, kind: str | None = None, **fields: Any) -> None:
        with self.lock:
            row = self.rows.get(name) or Row(name, kind or name)
            if "status" in fields and fields["status"] != row.status:
                row.since = time.monotonic()
            for key, value in fields.items():
                setattr(row, key, value)
            self.rows[name] = row
        self.on_change()

    def drop(self, name: str) -> None:
        with self.lock:
            self.rows.pop(name, None)
        self.on_change()

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for row in self.rows.values():
                item = asdict(row)
                item.pop("since")
                out.append(item)
            return out
