"""Shared fixtures: processes on free loopback ports, always stopped by PID."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pdserve.process import ManagedProcess, free_port
from testkit import REFERENCE, Spawn


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start a child process; every one started is stopped (its whole group) at teardown.

    Children get a TMPDIR of their own (short: vLLM binds sockets in it), removed at teardown.
    """
    started: list[ManagedProcess] = []
    scratch = tempfile.mkdtemp(prefix="spawn-", dir="/tmp")

    def _spawn(name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ManagedProcess:
        env = {**(os.environ if env is None else env), "TMPDIR": scratch}
        proc = ManagedProcess(name, list(argv), tmp_path / f"{name}.log", env=env)
        started.append(proc.start())
        return proc

    yield _spawn
    for proc in reversed(started):
        proc.stop(timeout=5)
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def port() -> Callable[[], int]:
    return free_port


@pytest.fixture(scope="session")
def reference() -> Path:
    assert REFERENCE.is_dir(), f"upstream reference files expected at {REFERENCE}"
    return REFERENCE
