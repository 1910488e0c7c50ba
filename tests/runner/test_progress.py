"""What a person reads when a service is ready: counts in words, commands that run."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from pdserve.runner.progress import pdserve_command, pools_text, print_ready


def test_pools_read_as_words() -> None:
    assert pools_text({"prefill": 1, "decode": 2}) == "1 prefill, 2 decode"
    assert pools_text({"decode": 1}) == "1 decode"


def test_the_printed_command_runs_when_pdserve_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cmd = pdserve_command()
    assert cmd != "pdserve"
    assert Path(cmd).resolve() == (Path(sys.executable).parent / "pdserve").resolve()
    assert os.access(cmd, os.X_OK)


def test_ready_message_names_the_state_dir_and_tokenizer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = {
        "state_dir": str(tmp_path),
        "summary": {
            "name": "svc",
            "engine": "sim",
            "pools": {"prefill": 1, "decode": 1},
            "url": "http://127.0.0.1:8080",
            "model": "m",
            "model_dir": "/models/m",
        },
    }
    print_ready(data)
    out = capsys.readouterr().out
    assert "(sim engines: 1 prefill, 1 decode)" in out
    assert "tokenizer (for load generators): /models/m" in out
    status = next(line for line in out.splitlines() if "status" in line and "then:" in line)
    words = shlex.split(status.split("then:", 1)[1].split("|")[0])
    assert words[1:] == ["status", "--state-dir", str(tmp_path)]
