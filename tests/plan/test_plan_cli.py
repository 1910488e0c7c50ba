"""`pdserve plan` on the command line: progress, the recommendation, --output, and one-line
errors (exit 2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from pdserve.api import load
from testkit import PDSERVE, REPO

WORKLOAD = {
    "api": "chat",
    "arrival": {"process": "poisson", "rate": 12},
    "input_tokens": {"dist": "uniform", "min": 1500, "max": 3000},
    "output_tokens": {"dist": "uniform", "min": 8, "max": 16},
}


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PDSERVE, "plan", *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def workload(tmp_path: Path) -> str:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(WORKLOAD))
    return str(path)


def test_recommends_and_writes_the_service(tmp_path: Path) -> None:
    out = tmp_path / "service.yaml"
    done = plan(
        "--workload", workload(tmp_path), "--slo", "ttft_p90=800ms", "--accelerators", "2",
        "--max-tp", "1", "--requests", "30", "--output", str(out), "--check-seed", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recommended: " in done.stdout and "runner-up: " in done.stdout
    assert "check seed: " in done.stdout
    progress = [line for line in done.stderr.splitlines() if line.startswith("plan ")]
    assert len(progress) >= 2 and "goodput" in progress[0]
    (service,) = load(out)
    assert service.metadata is not None and service.metadata.name == "llm"


def test_no_layout_meeting_the_slos_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "service.yaml"
    done = plan(
        "--workload", workload(tmp_path), "--slo", "ttft_p90=1ms", "--accelerators", "1",
        "--requests", "5", "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "no layout on up to 1 GPUs meets the SLOs" in done.stdout
    assert not out.exists()


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("pdserve plan:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    wl = workload(tmp_path)
    one_line_error(plan("--workload", wl, "--accelerators", "2"), "--slo")
    one_line_error(plan("--workload", wl, "--slo", "ttft=2s", "--accelerators", "2"), "ttft=2s")
    one_line_error(plan("--workload", wl, "--slo", "ttft_p90=2s", "--accelerators", "0"), "> 0")
    one_line_error(
        plan(
            "--workload", str(tmp_path / "none.yaml"), "--slo", "e2e_p50=1s", "--accelerators", "1"
        ),
        "none.yaml",
    )
    profile = tmp_path / "profile.yaml"
    profile.write_text("decode_ms: 3\n")
    one_line_error(
        plan(
            "--workload",
            wl,
            "--slo",
            "e2e_p50=1s",
            "--accelerators",
            "1",
            "--profile",
            str(profile),
        ),
        "decode_ms",
    )
