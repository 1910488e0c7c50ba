"""Helpers for `pdserve up` tests (a module, since conftest modules cannot be imported)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdserve.process import free_port, pid_alive
from testkit import PDSERVE, REPO

EXAMPLE = REPO / "examples" / "pd-smollm2.yaml"
# The example's EPP skips prefill for prompts under 256 uncached characters (pd-profile-handler
# threshold); this system message makes a chat long enough to be disaggregated.
SYSTEM = (
    "You are a helpful assistant for a geography quiz. Answer each question with one short, "
    "correct sentence. Do not add explanations, lists, greetings or follow-up questions. "
    "If a question asks for a capital city, name the city and the country. Keep answers "
    "factual, neutral and in plain English."
)


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@dataclass
class Service:
    state_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def component(self, name: str) -> dict[str, Any]:
        return next(r for r in self.state()["components"] if r["name"] == name)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return pdserve(*args, "--state-dir", str(self.state_dir), timeout=timeout)

    def pids(self) -> list[int]:
        data = self.state()
        return [data["pid"], *(r["pid"] for r in data["components"] if r.get("pid"))]


def pdserve(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PDSERVE, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def all_dead(pids: list[int]) -> bool:
    return not any(pid_alive(p) for p in pids)


class Ups:
    """Services started with `pdserve up --detach` into one folder, each downed and checked
    empty by close(): the `up` fixture's (one test) and `shared_sim`'s (one module).

    The runner and its children get a TMPDIR of their own, which `down` must leave empty.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[tuple[Service, list[int]]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="up-", dir="/tmp"))  # short: vLLM binds in it

    def __call__(
        self, *args: str, manifest: Path = EXAMPLE, timeout: float = 600, state: Path | None = None
    ) -> Service:
        """`state`: a state folder to reuse (default: a new one per service)."""
        service = Service(state or self.root / f"state{len(self.started)}", free_port())
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
            env={**os.environ, "TMPDIR": str(self.tmp)},
        )
        if (service.state_dir / "state.json").exists():
            self.started.append((service, service.pids()))
        assert done.returncode == 0, f"pdserve up failed:\n{done.stdout}\n{done.stderr}"
        assert "ready" in done.stdout
        self.started[-1] = (service, service.pids())
        return service

    def close(self) -> None:
        for service, pids in self.started:
            service.cli("down", timeout=300)
            assert all_dead(pids + service.pids()), "pdserve down left processes running"
        left = list(self.tmp.iterdir())
        shutil.rmtree(self.tmp)
        assert left == [], "pdserve down left temporary files"
