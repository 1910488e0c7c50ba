"""A state folder keeps each run's logs apart: a new run starts empty, earlier runs stay
readable under runs/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pdserve.errors import UserError
from pdserve.runner import state as state_mod
from pdserve.runner.state import StateDir


def run_once(state: StateDir, stamp: float, text: str) -> None:
    state.logs.mkdir(parents=True, exist_ok=True)
    state.log("epp").write_text(text)
    state.write({"pid": 1, "started": stamp, "components": [{"name": "epp", "port": 9}]})


def test_rotate_moves_logs_and_state_to_a_run_folder(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert state.rotate() is None  # nothing to keep yet
    run_once(state, 1_000_000_000, "first")
    moved = state.rotate()
    assert moved is not None and moved.parent == state.runs
    assert moved.name == time.strftime("%Y%m%d-%H%M%S", time.localtime(1_000_000_000))
    assert not state.logs.exists()
    assert (moved / "epp.log").read_text() == "first"
    assert json.loads((moved / "state.json").read_text())["components"][0]["port"] == 9
    run_once(state, 1_000_000_100, "second")
    state.rotate()
    folder, data = state.run("previous")
    assert (folder / "epp.log").read_text() == "second"
    assert data is not None and data["pid"] == 1
    assert (state.run("2")[0] / "epp.log").read_text() == "first"
    assert state.run(moved.name)[0] == moved


def test_only_the_last_runs_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "RUNS_KEPT", 2)
    state = StateDir(tmp_path)
    for i in range(4):
        run_once(state, 1_000_000_000 + 10 * i, str(i))
        state.rotate()
    assert [(p / "epp.log").read_text() for p in state.previous_runs()] == ["3", "2"]


def test_an_unknown_run_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--run 3: no such earlier run in .* \(have: none\)"):
        StateDir(tmp_path).run("3")
