"""`pdserve up` listens on loopback only: every process of the service, NIXL's UCX included.

What `ss -ltnup` shows by hand, checked through psutil for the PIDs in the state file and
their children (a vLLM engine's worker, for one).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from upkit import Service, chat

from pdserve.engines import vllm


def test_every_listener_is_on_loopback(up: Callable[..., Service]) -> None:
    service = up("--engine", "sim")
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
