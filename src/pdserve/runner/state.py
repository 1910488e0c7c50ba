"""The state folder of one local service: its state file and component logs.

`pdserve up` writes state.json (supervisor PID, control port, gateway URL, each
component's PID, port, log and status) so that `status`, `logs`, `down` and
`scale` work from other shells. One folder per service: pass another
--state-dir to run several side by side. Each `up` starts with empty logs: the
previous run's logs and its last state file move to runs/<start time>, so one
run's trace never mixes with another's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pdserve.errors import UserError

RUNS_KEPT = 10  # earlier runs' logs kept under runs/


def default_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("PDSERVE_STATE_DIR", Path(base) / "pdserve" / "default"))


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()

    @property
    def file(self) -> Path:
        return self.path / "state.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def rotate(self) -> Path | None:
        """Move the last run's logs and state file to runs/<when it started>."""
        if not self.logs.is_dir() or not any(self.logs.iterdir()):
            return None
        started = (self.read() or {}).get("started") or self.logs.stat().st_mtime
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
        dest, n = self.runs / stamp, 1
        while dest.exists():
            n += 1
            dest = self.runs / f"{stamp}-{n}"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.logs.rename(dest)
        if self.file.is_file():
            shutil.copy(self.file, dest / "state.json")
        for old in self.previous_runs()[RUNS_KEPT:]:
            shutil.rmtree(old, ignore_errors=True)
        return dest

    def previous_runs(self) -> list[Path]:
        """Earlier runs' folders, newest first."""
        if not self.runs.is_dir():
            return []
        return sorted((p for p in self.runs.iterdir() if p.is_dir()), reverse=True)

    def run(self, which: str) -> tuple[Path, dict[str, Any] | None]:
        """An earlier run's log folder and last state: `previous` (or 1), 2 the one before,
        or a folder name under runs/."""
        runs = self.previous_runs()
        if which == "previous":
            which = "1"
        chosen = runs[int(which) - 1] if which.isdigit() and 0 < int(which) <= len(runs) else None
        if chosen is None and (self.runs / which).is_dir():
            chosen = self.runs / which
        if chosen is None:
            have = " ".join(p.name for p in runs) or "none"
            raise UserError(f"--run {which}: no such earlier run in {self.runs} (have: {have})")
        try:
            state = json.loads((chosen / "state.json").read_text())
        except (OSError, ValueError):
            state = None
        return chosen, state

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def write(self, data: dict[str, Any]) -> None:
        """Replace the state file atomically so readers never see half of it."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.file)
