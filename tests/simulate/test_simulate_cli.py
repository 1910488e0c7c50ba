"""`pdserve simulate` on the command line: the report file, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from simkit import LONG_PROMPTS, fleet, workload

from pdserve.bench import report
from testkit import PDSERVE, REPO


def simulate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PDSERVE, "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )


def test_writes_bench_report_the_same_in_every_process(tmp_path: Path) -> None:
    manifest, wl = fleet(tmp_path, 1, 1), workload(tmp_path, "long", LONG_PROMPTS)
    outputs = []
    for hash_seed in ("1", "2"):  # str hashing differs between the two processes
        out = tmp_path / f"sim-{hash_seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = simulate(
            str(manifest),
            "--workload",
            str(wl),
            "--duration",
            "5",
            "--seed",
            "7",
            "--output",
            str(out),
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "ttft_ms" in done.stdout and "simulated" in done.stderr
        outputs.append(json.loads(out.read_text()))
    assert outputs[0] == outputs[1]
    assert tuple(outputs[0]) == report.KEYS and outputs[0]["requests"] > 0


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("pdserve simulate:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    manifest, wl = fleet(tmp_path, 1, 1), workload(tmp_path, "long", LONG_PROMPTS)
    one_line_error(
        simulate(str(tmp_path / "nope.yaml"), "--workload", str(wl), "--duration", "1"),
        "nope.yaml",
        "no such file",
    )
    bad = workload(tmp_path, "bad", {**LONG_PROMPTS, "arrivl": {"process": "poisson", "rate": 1}})
    one_line_error(
        simulate(str(manifest), "--workload", str(bad), "--duration", "1"), "arrivl", "unknown key"
    )
    one_line_error(
        simulate(str(manifest), "--workload", str(tmp_path / "none.yaml"), "--duration", "1"),
        "none.yaml",
    )
    one_line_error(simulate(str(manifest), "--workload", str(wl)), "--duration")
    one_line_error(simulate(str(manifest), "--workload", str(wl), "--duration", "-1"), "--duration")
    profile = tmp_path / "profile.yaml"
    profile.write_text("decode_ms: 3\n")
    one_line_error(
        simulate(
            str(manifest), "--workload", str(wl), "--duration", "1", "--profile", str(profile)
        ),
        "decode_ms",
    )
    one_line_error(simulate(str(REPO / "pyproject.toml"), "--workload", str(wl), "--duration", "1"))


def test_a_labelled_replay_reports_its_classes(tmp_path: Path) -> None:
    """simulate's results carry each planned request, so its report splits by label as
    bench's does."""
    rows = [
        {"timestamp": t, "text": "Tell me about the sea.", "output_tokens": 8, "label": "chat"}
        for t in (0.0, 0.4, 0.8, 1.2)
    ] + [
        {"timestamp": t, "input_tokens": 400, "output_tokens": 1, "label": "long"}
        for t in (0.2, 1.0)
    ]
    rows.append({"timestamp": 0.6, "input_tokens": 20, "output_tokens": 4})  # in no class
    (tmp_path / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wl = workload(tmp_path, "replay", {"api": "chat", "replay": {"file": "trace.jsonl"}})
    out = tmp_path / "sim.json"
    done = simulate(str(fleet(tmp_path, 1, 1)), "--workload", str(wl), "--output", str(out))
    assert done.returncode == 0, done.stderr
    built = json.loads(out.read_text())
    assert built["requests"] == 7
    assert {k: c["requests"] for k, c in built["classes"].items()} == {"chat": 4, "long": 2}
    assert built["classes"]["chat"]["itl_ms"]["p50"] is not None
    assert "class chat: 4 requests" in done.stdout
