"""The InferencePool's failureMode at the gateway: FailOpen (KServe's) serves from the
pool's healthy endpoints while the EPP is down, FailClose answers 503; either way a client
cannot pick the endpoint itself. And a dead decode endpoint under load: the gateway's retry
on another endpoint of the pool."""

from __future__ import annotations

import collections
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from upkit import EXAMPLE, Service

from pdserve.process import free_port, wait_until
from pdserve.runner.plan import make_plan
from testkit import post_until

BODY = {"model": "smollm2", "prompt": "Say hi.", "max_tokens": 4}


def kill_epp(service: Service) -> None:
    pid = service.component("epp")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: service.component("epp")["status"] != "ready", 10, "the EPP to be down")


@pytest.fixture
def slow_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time to send requests while the EPP is down: its restart waits 20 s."""
    monkeypatch.setenv("PDSERVE_RESTART_BACKOFF", "20")


def test_fail_open_serves_from_the_pool_while_the_epp_is_down(
    up: Callable[..., Service], slow_restarts: None
) -> None:
    service = up("--engine", "sim")
    kill_epp(service)
    spoofed = {"x-gateway-destination-endpoint": f"127.0.0.1:{free_port()}"}  # nothing there
    with httpx.Client(base_url=service.url, timeout=30) as http:
        answers = [http.post("/v1/completions", json=BODY, headers=spoofed) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert service.component("epp")["status"] != "ready"  # it was down all along


def test_fail_close_is_a_503_with_a_body(
    up: Callable[..., Service], slow_restarts: None, tmp_path: Path
) -> None:
    manifest = tmp_path / "fail-close.yaml"
    manifest.write_text(
        EXAMPLE.read_text().replace(
            "    scheduler: {}\n",
            "    scheduler:\n      pool:\n        spec:\n"
            "          selector: {app: smollm2}\n          targetPortNumber: 8000\n"
            "          extensionRef: {name: smollm2-epp, failureMode: FailClose}\n",
        )
    )
    service = up("--engine", "sim", manifest=manifest)
    kill_epp(service)
    resp = httpx.post(f"{service.url}/v1/completions", json=BODY, timeout=30)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == 503


def test_the_failure_mode_comes_from_the_pool_spec() -> None:
    def mode(pool: dict[str, object] | None) -> str:
        router = {"scheduler": {"pool": {"spec": pool}}} if pool is not None else {}
        return make_plan({"spec": {"router": router}}, "ns", "").failure_mode

    assert mode(None) == "FailOpen"
    assert mode({"extensionRef": {"failureMode": "FailClose"}}) == "FailClose"
    assert mode({"endpointPickerRef": {"failureMode": "FailClose"}}) == "FailClose"
    assert mode({"extensionRef": {"name": "x"}}) == "FailOpen"


def _restarted(service: Service, name: str, pid: int) -> bool:
    row = service.component(name)
    return row["pid"] != pid and row["status"] == "ready"


def test_a_killed_decode_sidecar_under_load_costs_no_request(up: Callable[..., Service]) -> None:
    """P/D under `pdserve up`, two decode replicas, 8 clients: kill -9 one decode sidecar
    (what Envoy connects to). What it had taken or was sent before the EPP and the runner
    saw it down goes to the other replica on Envoy's one retry, so no answer is a 5xx."""
    service = up("--engine", "sim")
    assert service.cli("scale", "decode", "2").returncode == 0
    seen: list[int | str] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=post_until, args=(service.url, BODY, stop, seen)) for _ in range(8)
    ]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: len(seen) >= 20, 60, "the load to be served")
        before = service.component("sidecar-0")["pid"]
        os.kill(before, signal.SIGKILL)
        wait_until(lambda: _restarted(service, "sidecar-0", before), 60, "its restart")
        served = len(seen)
        wait_until(lambda: len(seen) >= served + 20, 60, "load after the restart")
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    assert set(seen) == {200}, collections.Counter(seen)
