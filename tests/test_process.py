"""Child processes: ports outside the kernel's ephemeral range, never twice; waiting until
something holds; telling a live process or group from a gone one."""

from __future__ import annotations

import socket
import subprocess
import time

import psutil
import pytest

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


def test_a_claimed_port_is_not_handed_out(monkeypatch) -> None:
    port = process.free_port()
    _only_port(monkeypatch, port)
    process.claim_port(port)  # chosen by a caller, not yet bound by anyone
    assert process.free_port() != port


def test_wait_until_returns_once_the_predicate_holds() -> None:
    calls = []
    process.wait_until(lambda: calls.append(None) or len(calls) == 3, 5, "three calls", interval=0)
    assert len(calls) == 3


def test_wait_until_names_what_it_waited_for_and_why() -> None:
    with pytest.raises(TimeoutError) as err:
        process.wait_until(lambda: False, 0.05, "the moon", interval=0.01, detail=lambda: "cloudy")
    assert str(err.value) == "waited 0.05s for the moon (cloudy)"


def test_wait_until_stops_at_once_when_abort_raises() -> None:
    def abort() -> None:
        raise process.ProcessDied("gone")

    with pytest.raises(process.ProcessDied):
        process.wait_until(lambda: False, 60, "a dead child", abort=abort)


def test_a_zombie_is_not_alive_nor_a_group_of_zombies() -> None:
    """In a container whose init does not reap, a stopped group's zombies stay: stopping
    it must not wait them out."""
    child = subprocess.Popen(["true"], start_new_session=True)
    process.wait_until(lambda: psutil.Process(child.pid).status() == "zombie", 10, "a zombie")
    assert not process.pid_alive(child.pid)
    start = time.monotonic()
    process.stop_group(child.pid, timeout=30)
    assert time.monotonic() - start < 10  # not the 30 s timeout waited out (busy 2 cores: slack)
    child.wait()


def test_a_group_outlives_its_leader_while_a_member_lives() -> None:
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.wait()
    assert not process.pid_alive(leader.pid) and process.pid_alive(member)
    assert process._group_alive(leader.pid)
    process.stop_group(leader.pid, timeout=10)
    assert not process.pid_alive(member) and not process._group_alive(leader.pid)
