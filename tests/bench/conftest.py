"""A sim engine to bench against: started on a free port, ready when /health answers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pdserve.process import free_port
from testkit import PDSERVE, Spawn


@pytest.fixture
def bench_engine(spawn: Spawn) -> Callable[..., str]:
    """Start `pdserve sim-engine` serving model `sim`; returns its base URL."""

    def start(*args: str) -> str:
        port = free_port()
        argv = [*PDSERVE, "sim-engine", "--port", str(port), "--served-model-name", "sim", *args]
        proc = spawn(f"bench-sim-{port}", argv)
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{url}/health", timeout=60)
        return url

    return start
