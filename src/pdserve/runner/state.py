"""The state folder of one local service: its state file and component logs.

`pdserve up` writes state.json (supervisor PID, control port, gateway URL, each
component's PID, port, log and status) so that `status`, `logs`, `down` and
`scale` work from other shells. One folder per service: pass another
--state-dir to run several side by side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeGuard

from pdserve.process import proc_stat


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


def pid_alive(pid: object) -> TypeGuard[int]:
    """Takes what a state file holds (an int, or None when a component never started)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = proc_stat(pid)
    return stat is None or stat[0] != "Z"  # a zombie is not alive
