"""Shared fixtures: processes on free loopback ports, always stopped by PID.

And the `conformance` group: tests that read upstream files from ../shared/reference. A plain
clone has no such folder, so the group is left out there with one line saying so; CI
(`CI=true`) must run it, so there the missing folder fails the run instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pdserve.process import ManagedProcess, free_port
from testkit import REFERENCE, Spawn

CONFORMANCE = "conformance"
_LEFT_OUT = pytest.StashKey[int]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _tests(n: int) -> str:
    return f"{n} test" if n == 1 else f"{n} tests"


def _missing(n: int) -> str:
    return (
        f"conformance group ({_tests(n)}) did not run: {REFERENCE} is missing "
        "(upstream files, ../shared beside the repository)"
    )


@pytest.hookimpl(trylast=True)  # after -m/-k have deselected, so only chosen tests count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group = [item for item in items if item.get_closest_marker(CONFORMANCE)]
    if not group or REFERENCE.is_dir():
        return
    if _in_ci():
        raise pytest.UsageError(f"{_missing(len(group))}, and CI=true requires it")
    items[:] = [item for item in items if not item.get_closest_marker(CONFORMANCE)]
    config.hook.pytest_deselected(items=group)
    config.stash[_LEFT_OUT] = len(group)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Always say how many conformance tests ran, so a green run never hides a skipped group."""
    left_out = terminalreporter.config.stash.get(_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{_missing(left_out)}; with CI=true this fails the run")
    ran = sum(
        1
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call" and CONFORMANCE in report.keywords
    )
    terminalreporter.write_line(f"conformance: {_tests(ran)} ran")


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
