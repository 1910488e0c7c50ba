"""`pdserve operator`: help without a cluster, one-line errors with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdserve import cli

SRC = Path(__file__).resolve().parents[2] / "src"


def test_help_needs_no_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["operator", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--namespace", "--all-namespaces", "--system-namespace", "--webhook-port"):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-n", "a", "--all-namespaces"], "not allowed with argument"),
        (["--webhook-port", "70000"], "--webhook-port: 70000 is not a port"),
        (["--webhook-port", "x"], "invalid int value"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["operator", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert err.count("\n") == 1


def test_no_kubeconfig_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "HOME": str(tmp_path),  # no ~/.kube/config, no KUBECONFIG, not in a pod
        "PYTHONPATH": str(SRC),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pdserve", "operator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("pdserve operator: no cluster to connect to")
