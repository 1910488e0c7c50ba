import subprocess

from testkit import PDSERVE


def test_help_lists_commands() -> None:
    out = subprocess.run([*PDSERVE, "--help"], capture_output=True, text=True, check=True).stdout
    assert "render" in out and "sim-engine" in out


def test_unknown_command_exits_2() -> None:
    proc = subprocess.run([*PDSERVE, "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown command 'frobnicate'" in proc.stderr
