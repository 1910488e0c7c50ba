"""Fixtures for `pdserve up` tests: a detached service in a temp state folder, always downed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from upkit import EXAMPLE, Service, all_dead, pdserve


@pytest.fixture
def up(tmp_path: Path, port: Callable[[], int]) -> Iterator[Callable[..., Service]]:
    """Start `pdserve up --detach`; every service started is downed and checked empty.

    The runner and its children get a TMPDIR of their own, which `down` must leave empty.
    """
    started: list[tuple[Service, list[int]]] = []
    tmp = Path(tempfile.mkdtemp(prefix="up-", dir="/tmp"))  # short: vLLM binds sockets in it

    def _up(
        *args: str, manifest: Path = EXAMPLE, timeout: float = 600, state: Path | None = None
    ) -> Service:
        """`state`: a state folder to reuse (default: a new one per service)."""
        service = Service(state or tmp_path / f"state{len(started)}", port())
        done = pdserve(
            "up",
            str(manifest),
            "--detach",
            "--port",
            str(service.port),
            "--state-dir",
            str(service.state_dir),
            *args,
            timeout=timeout,
            env={**os.environ, "TMPDIR": str(tmp)},
        )
        if (service.state_dir / "state.json").exists():
            started.append((service, service.pids()))
        assert done.returncode == 0, f"pdserve up failed:\n{done.stdout}\n{done.stderr}"
        assert "ready" in done.stdout
        started[-1] = (service, service.pids())
        return service

    yield _up
    for service, pids in started:
        service.cli("down", timeout=300)
        assert all_dead(pids + service.pids()), "pdserve down left processes running"
    left = list(tmp.iterdir())
    shutil.rmtree(tmp)
    assert left == [], "pdserve down left temporary files"
