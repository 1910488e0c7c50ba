"""Fixtures for `pdserve up` tests: detached services in temp state folders, always downed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from upkit import Service, Ups


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start `pdserve up --detach` (upkit.Ups): every service this test started is downed."""
    ups = Ups(tmp_path)
    yield ups
    ups.close()


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One `pdserve up --engine sim` for a whole module, for tests that only send requests
    and read what the service shows (listeners, logs): one start instead of one each."""
    ups = Ups(tmp_path_factory.mktemp("shared-sim"))
    try:
        yield ups("--engine", "sim")
    finally:
        ups.close()
