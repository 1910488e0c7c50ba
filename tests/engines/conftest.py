from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pdserve.process import ManagedProcess, free_port
from testkit import NO_STRANDED_KV, PDSERVE, Spawn, assert_no_stranded_kv

NIXL = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})


@dataclass
class Engine:
    proc: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartEngine = Callable[..., Engine]


@pytest.fixture
def sim_engine(spawn: Spawn, request: pytest.FixtureRequest) -> Iterator[StartEngine]:
    """Start `pdserve sim-engine` on a free port and wait for /health; with the
    `no_stranded_kv` mark, every one still running must hold no KV at the end."""
    count = 0
    started: list[Engine] = []

    def start(
        *args: str, model: str = "sim", env: dict[str, str] | None = None, kv: str | None = NIXL
    ) -> Engine:
        nonlocal count
        count += 1
        port = free_port()
        argv = [*PDSERVE, "sim-engine", "--port", str(port), "--served-model-name", model, *args]
        if kv:
            argv += ["--kv-transfer-config", kv]
        import os

        proc = spawn(f"sim{count}", argv, env={**os.environ, **(env or {})})
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        started.append(Engine(proc, port))
        return started[-1]

    yield start
    if request.node.get_closest_marker(NO_STRANDED_KV):
        assert_no_stranded_kv([e.url for e in started if e.proc.alive()])
