"""Shared fixtures: processes on free loopback ports, always stopped by PID."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pdserve.process import ManagedProcess, free_port
from testkit import REFERENCE, Spawn


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start a child process; every one started is stopped (its whole group) at teardown."""
    started: list[ManagedProcess] = []

    def _spawn(name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ManagedProcess:
        proc = ManagedProcess(name, list(argv), tmp_path / f"{name}.log", env=env)
        started.append(proc.start())
        return proc

    yield _spawn
    for proc in reversed(started):
        proc.stop(timeout=5)


@pytest.fixture
def port() -> Callable[[], int]:
    return free_port


@pytest.fixture(scope="session")
def reference() -> Path:
    assert REFERENCE.is_dir(), f"upstream reference files expected at {REFERENCE}"
    return REFERENCE
