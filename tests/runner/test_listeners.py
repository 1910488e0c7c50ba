"""`pdserve up` listens on loopback only: every process of the service, NIXL's UCX included;
Envoy's admin is not reachable through the gateway; and no log holds a prompt or a
credential.

What `ss -ltnup` shows by hand, checked through psutil for the PIDs in the state file and
their children (a vLLM engine's worker, for one). One sim service serves the module.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from upkit import SYSTEM, Service, chat

from pdserve.engines import vllm
from testkit import metric


def test_every_listener_is_on_loopback(shared_sim: Service) -> None:
    service = shared_sim
    _pd_request(service)  # a NIXL transfer has run: UCX's listeners and endpoints exist
    found = list(_listeners(service))
    assert any(port == service.port for _, _, port in found), found
    beyond = [f"{name} on {ip}:{port}" for name, ip, port in found if not _loopback(ip)]
    assert not beyond, "listening beyond loopback: " + ", ".join(beyond)


def test_vllm_engines_get_the_loopback_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """vLLM is not run here: its command carries what keeps UCX and gloo on loopback."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed").touch()
    monkeypatch.setenv("PDSERVE_ENGINES_VENV", str(venv))
    cmd = vllm.command(Path("/m"), "smollm2", 9001, pd=True, side_channel_port=5600)
    assert cmd.env["UCX_NET_DEVICES"] == "lo" and cmd.env["GLOO_SOCKET_IFNAME"] == "lo"
    assert cmd.env["VLLM_HOST_IP"] == cmd.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"


def _pd_request(service: Service) -> None:
    body = {"model": "smollm2", "messages": chat("What is the capital of Peru?"), "max_tokens": 4}
    reply = httpx.post(f"{service.url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text


def _loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv6 socket bound to ::ffff:127.0.0.1 (gRPC's way)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _listeners(service: Service) -> Iterator[tuple[str, str, int]]:
    """(process, address, port) of each listening TCP socket and unconnected UDP socket."""
    for name, proc in _processes(service).items():
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            tcp_listen = conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN
            udp_bound = conn.type == socket.SOCK_DGRAM and not conn.raddr
            if tcp_listen or udp_bound:
                yield f"{name} (pid {proc.pid})", conn.laddr.ip, conn.laddr.port


def _processes(service: Service) -> dict[str, psutil.Process]:
    """Each component and its descendants (named after it), then the supervisor and any
    other process it started: every process once, under the most telling name."""
    data = service.state()
    roots = [(r["name"], r["pid"]) for r in data["components"] if r.get("pid")]
    roots.append(("supervisor", data["pid"]))
    named: dict[int, tuple[str, psutil.Process]] = {}
    for name, pid in roots:
        root = psutil.Process(pid)
        for n, proc in [(name, root)] + [(f"{name}/{c.name()}", c) for c in root.children(True)]:
            named.setdefault(proc.pid, (n, proc))
    return dict(named.values())


ADMIN_PATHS = [
    ("GET", "/stats"),
    ("GET", "/config_dump"),
    ("GET", "/clusters"),
    ("GET", "/server_info"),
    ("POST", "/quitquitquit"),
    ("POST", "/healthcheck/fail"),
    ("POST", "/logging?level=trace"),
]


def test_envoys_admin_is_not_reachable_through_the_gateway(shared_sim: Service) -> None:
    """Admin is its own listener, on loopback and a free port the runner picked (not Envoy's
    usual 9901); the gateway's routes know nothing of it: an admin path sent there, even
    with a Host naming the admin address, is routed to an engine like any path, and Envoy
    goes on serving."""
    service = shared_sim
    boot = json.loads((service.state_dir / "envoy.json").read_text())
    admin = boot["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1"
    port = admin["port_value"]
    assert port not in (9901, service.port)
    envoy = [lp for name, _, lp in _listeners(service) if name.startswith("envoy")]
    assert port in envoy, envoy
    pid = service.component("envoy")["pid"]
    for host in (None, f"127.0.0.1:{port}", f"localhost:{port}"):
        headers = {"host": host} if host else {}
        for method, path in ADMIN_PATHS:
            resp = httpx.request(method, f"{service.url}{path}", headers=headers, timeout=30)
            assert 400 <= resp.status_code < 500, (method, path, host, resp.status_code)
            assert set(resp.json()) == {"error"}, resp.text  # an engine's answer, not admin's
    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
    assert ready.status_code == 200 and ready.text.strip() == "LIVE"
    assert service.component("envoy")["pid"] == pid  # not quit and restarted meanwhile
    _pd_request(service)


def _sidecar_outcomes(service: Service) -> dict[str, float]:
    sidecars = [r for r in service.state()["components"] if r["name"].startswith("sidecar")]
    return {
        outcome: sum(
            metric(f"http://127.0.0.1:{r['port']}", "pdserve_sidecar_requests_total",
                   outcome=outcome)
            for r in sidecars
        )
        for outcome in ("pd", "decode-only")
    }  # fmt: skip


def _logs(service: Service) -> str:
    """Every file of the run's state folder (logs, state, configs), as text."""
    files = [f for f in service.state_dir.rglob("*") if f.is_file()]
    return "".join(f.read_bytes().decode(errors="replace") for f in files)


def test_no_log_holds_a_prompt_or_an_authorization_header(shared_sim: Service) -> None:
    """At the default level: a P/D and a decode-only request, each carrying a marker in its
    prompt and a bearer token, leave their request ids in the logs and neither secret."""
    service = shared_sim
    marker, token = f"MARK{uuid.uuid4().hex}", f"tok{uuid.uuid4().hex}"
    before = _sidecar_outcomes(service)
    rids = []
    for kind, messages in (
        # New to every prefix cache (its first block), long: disaggregated.
        (
            "pd",
            [
                {"role": "system", "content": f"{marker} {SYSTEM}"},
                {"role": "user", "content": marker},
            ],
        ),
        ("decode-only", [{"role": "user", "content": marker}]),
    ):
        rid = f"sweep-{kind}-{uuid.uuid4().hex[:8]}"
        rids.append(rid)
        reply = httpx.post(
            f"{service.url}/v1/chat/completions",
            json={"model": "smollm2", "messages": messages, "max_tokens": 4},
            headers={"authorization": f"Bearer {token}", "x-request-id": rid},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
    after = _sidecar_outcomes(service)
    assert {k: after[k] - before[k] for k in after} == {"pd": 1, "decode-only": 1}
    deadline = time.monotonic() + 10
    while not all(rid in _logs(service) for rid in rids):  # the lines are written
        assert time.monotonic() < deadline, "the requests' log lines never appeared"
        time.sleep(0.05)
    text = _logs(service)
    assert marker not in text and token not in text
