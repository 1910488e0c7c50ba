"""`down` while a scale is starting engines: it stops at once and leaves nothing running."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from upkit import EXAMPLE

from pdserve.process import ManagedProcess, ProcessDied, pid_alive
from pdserve.runner.board import Board
from pdserve.runner.components import EngineSlot
from pdserve.runner.manifest import load_plan
from pdserve.runner.service import LocalService, Replica, scratch_dir
from pdserve.runner.state import StateDir


def test_stop_during_a_slow_scale_up_is_prompt_and_stops_the_new_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = LocalService(load_plan(EXAMPLE), "sim", StateDir(tmp_path), 0, Board())
    launched, release = threading.Event(), threading.Event()
    engines: list[ManagedProcess] = []

    def launch(role: str, total: int) -> Replica:
        # An engine that would take minutes to be ready (a vLLM start-up, in effect).
        proc = ManagedProcess("decode-9", ["sleep", "600"], tmp_path / "e.log").start()
        engines.append(proc)
        replica = Replica(role, 9, EngineSlot(0, 0, None), proc)
        svc.pools[role].append(replica)
        launched.set()
        return replica

    def wait_ready(replica: Replica) -> None:
        release.wait(60)
        replica.engine.check_alive()  # what the readiness probe reports once it is killed

    monkeypatch.setattr(svc, "_launch", launch)
    monkeypatch.setattr(svc, "_await", wait_ready)
    errors: list[BaseException] = []

    def scale() -> None:
        try:
            svc.scale("decode", 1, progress=lambda _: None)
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=scale)
    worker.start()
    try:
        assert launched.wait(10)
        started = time.monotonic()
        svc.stop()  # must not wait for the scale's lock
        assert time.monotonic() - started < 20
        assert not pid_alive(engines[0].pid)
    finally:
        release.set()
        worker.join(30)
        for proc in engines:
            proc.stop(1)
    assert errors and isinstance(errors[0], ProcessDied)


def test_scratch_is_in_tmpdir_unless_too_deep_for_a_socket_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short, deep = Path(tempfile.mkdtemp(dir="/tmp")), tmp_path / ("d" * 80)
    deep.mkdir()
    try:
        for tmpdir, parent in ((short, short), (deep, Path("/tmp"))):
            monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
            scratch = scratch_dir()
            scratch.rmdir()
            assert scratch.parent == parent
            assert len(str(scratch / str(uuid.uuid4()))) <= 107
        assert list(deep.iterdir()) == []
    finally:
        short.rmdir()
