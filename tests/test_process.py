"""Port choice for child processes: outside the kernel's ephemeral range, never twice."""

from __future__ import annotations

import socket

from pdserve import process


def test_free_ports_avoid_the_ephemeral_range_and_repeat_nowhere() -> None:
    low, high = process.ephemeral_range()
    ports = [process.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(process.LOWEST_PORT <= p < low for p in ports), (low, high)


def _only_port(monkeypatch, port: int) -> None:
    monkeypatch.setattr(process, "LOWEST_PORT", port)
    monkeypatch.setattr(process, "ephemeral_range", lambda: (port + 1, port + 2))
    monkeypatch.setattr(process, "_handed_out", set())


def test_a_listening_port_is_never_chosen(monkeypatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", process.free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        _only_port(monkeypatch, taken)
        assert process.free_port() != taken


def test_the_only_free_port_is_handed_out_once(monkeypatch) -> None:
    port = process.free_port()
    _only_port(monkeypatch, port)
    assert process.free_port() == port
    assert process.free_port() != port
