"""The runner restarts what exits, stops only on a crash loop, and cleans up after a dead
supervisor (`pdserve up --engine sim`)."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from upkit import SYSTEM, Service

from pdserve import endpoints, promtext
from pdserve.process import pid_alive, wait_until
from pdserve.runner.service import RestartPolicy, exit_text
from pdserve.wire import ROLE_LABEL

MODEL = "smollm2"


def test_backoff_doubles_to_its_cap_and_exits_read_as_code_or_signal() -> None:
    policy = RestartPolicy()
    delays = [0.0]
    for _ in range(7):
        delays.append(policy.delay(delays[-1]))
    assert delays[1:] == [1, 2, 4, 8, 16, 30, 30]
    assert exit_text(-9) == "signal 9 (SIGKILL)" and exit_text(3) == "code 3"


@dataclass
class Load:
    """A few clients sending P/D-sized chats through the gateway, each prompt new (a repeat
    would be cached on the decode engine and served decode-only)."""

    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def client(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.done.is_set():
                body = {
                    "model": MODEL,
                    "max_tokens": 8,
                    "messages": [
                        {"role": "system", "content": f"{uuid.uuid4().hex} {SYSTEM}"},
                        {"role": "user", "content": "What is the capital of France?"},
                    ],
                }
                try:
                    reply = http.post(f"{self.url}/v1/chat/completions", json=body)
                    assert reply.status_code == 200, reply.text
                    assert reply.json()["choices"][0]["message"]["content"]
                    self.ok += 1
                except Exception as err:
                    self.failures.append(repr(err))


@contextmanager
def steady_load(service: Service, clients: int = 3) -> Iterator[Load]:
    load = Load(service.url)
    threads = [threading.Thread(target=load.client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield load
    finally:
        load.done.set()
        for t in threads:
            t.join(60)


def roles(service: Service) -> list[str]:
    return [e.labels[ROLE_LABEL] for e in endpoints.read(service.state_dir / "endpoints.json")]


def nixl_pulls(service: Service) -> float:
    """KV pulls the decode engine made from a prefill engine: one per P/D request."""
    port = service.component("decode-0")["port"]
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = promtext.samples(page, {"pdserve_sim:kv_pulls_total"})
    return sum(s.value for s in samples if s.labels.get("outcome") == "ok")


def restarted(service: Service, name: str, old_pid: int, restarts: int) -> Callable[[], bool]:
    def done() -> bool:
        row = service.component(name)
        return row["status"] == "ready" and row["pid"] != old_pid and row["restarts"] == restarts

    return done


def test_prefill_killed_under_load_is_restarted_and_no_request_fails(
    up: Callable[..., Service],
) -> None:
    service = up("--engine", "sim")
    wait_until(lambda: nixl_pulls(service) >= 0, 10, "the decode engine's metrics")
    with steady_load(service) as load:
        wait_until(lambda: nixl_pulls(service) >= 3 or bool(load.failures), 60, "P/D requests")
        old = service.component("prefill-0")["pid"]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: "prefill" not in roles(service), 10, "prefill-0 to leave endpoints")
        down = service.component("prefill-0")
        assert down["last_exit"] == "signal 9 (SIGKILL)", down
        at_exit = load.ok
        wait_until(restarted(service, "prefill-0", old, 1), 60, "prefill-0 to be restarted")
        served_while_down = load.ok - at_exit  # decode-only: no prefill endpoint to pick
        wait_until(lambda: "prefill" in roles(service), 10, "prefill-0 to rejoin endpoints")
        pulls = nixl_pulls(service)
        wait_until(lambda: nixl_pulls(service) >= pulls + 3, 60, "P/D again after the restart")
    assert not load.failures, load.failures[:5]
    assert served_while_down > 0
    assert pid_alive(service.component("prefill-0")["pid"])
    log = (service.state_dir / "logs" / "supervisor.log").read_text()
    assert '"event":"component_exited","child":"prefill-0"' in log, log
    assert '"exit":"signal 9 (SIGKILL)"' in log and '"event":"component_ready"' in log


def test_the_epp_and_envoy_are_restarted_too(up: Callable[..., Service]) -> None:
    service = up("--engine", "sim")
    pids = {name: service.component(name)["pid"] for name in ("epp", "envoy")}
    for name, pid in pids.items():
        os.kill(pid, signal.SIGKILL)
        wait_until(restarted(service, name, pid, 1), 60, f"{name} to be restarted")
    chat = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}

    def serves() -> bool:
        reply = httpx.post(f"{service.url}/v1/chat/completions", json=chat, timeout=10)
        return reply.status_code == 200

    wait_until(serves, 30, "the gateway to route through the new EPP and Envoy")


def test_a_crash_loop_stops_the_service_with_the_reason(
    up: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDSERVE_RESTART_LIMIT", "2")  # the supervisor reads these
    monkeypatch.setenv("PDSERVE_RESTART_BACKOFF", "0.2")
    service = up("--engine", "sim")
    supervisor = service.state()["pid"]
    for restarts in (1, 2):
        pid = service.component("sidecar-0")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(restarted(service, "sidecar-0", pid, restarts), 60, f"restart {restarts}")
    os.kill(service.component("sidecar-0")["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(supervisor), 60, "the supervisor to stop the service")
    state = service.state()
    assert state["status"] == "failed", state["status"]
    assert "sidecar-0 crash loop: exited 3 times" in state["reason"], state["reason"]
    status = service.cli("status")
    assert status.returncode == 1 and "sidecar-0 crash loop" in status.stdout, status.stdout
    assert "supervisor dead" not in status.stdout


def test_down_after_a_killed_supervisor_stops_its_children_and_temp_folder(
    up: Callable[..., Service],
) -> None:
    service = up("--engine", "sim")  # the fixture checks that nothing is left after down
    state = service.state()
    tmpdir = state["tmpdir"]
    assert os.path.isdir(tmpdir)
    os.kill(state["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(state["pid"]), 10, "the supervisor to die")
    chat = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    reply = httpx.post(f"{service.url}/v1/chat/completions", json=chat, timeout=30)
    assert reply.status_code == 200  # the orphans still serve
    status = service.cli("status")
    assert status.returncode == 1
    assert "supervisor dead" in status.stdout and "5 of 5 components still running" in (
        status.stdout
    ), status.stdout
    assert " down --state-dir " in status.stdout and "temp folder" in status.stdout
    out = service.cli("down")
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(tmpdir)
    after = service.cli("status").stdout
    assert "not running (stopped: pdserve down after the supervisor" in after, after
