"""`pdserve up --engine sim` for the agreement test: downed, and checked gone, at teardown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pdserve.process import free_port, pid_alive
from testkit import PDSERVE, REPO


def _pdserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PDSERVE, *args], capture_output=True, text=True, timeout=600, cwd=REPO, env=env
    )


def _pids(state: Path) -> list[int]:
    data = json.loads((state / "state.json").read_text())
    return [data["pid"], *(r["pid"] for r in data["components"] if r.get("pid"))]


@pytest.fixture
def sim_service(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Start a manifest under `pdserve up --engine sim --detach`; returns the gateway URL."""
    started: list[tuple[Path, list[int]]] = []
    scratch = Path(tempfile.mkdtemp(prefix="up-", dir="/tmp"))

    def start(manifest: Path) -> str:
        state, port = tmp_path / f"state{len(started)}", free_port()
        done = _pdserve(
            "up", str(manifest), "--engine", "sim", "--detach", "--port", str(port),
            "--state-dir", str(state), env={**os.environ, "TMPDIR": str(scratch)},
        )  # fmt: skip
        if (state / "state.json").exists():
            started.append((state, _pids(state)))
        assert done.returncode == 0, f"pdserve up failed:\n{done.stdout}\n{done.stderr}"
        return f"http://127.0.0.1:{port}"

    yield start
    for state, pids in started:
        _pdserve("down", "--state-dir", str(state))
        assert not any(pid_alive(p) for p in pids + _pids(state)), "down left processes"
    shutil.rmtree(scratch, ignore_errors=True)
