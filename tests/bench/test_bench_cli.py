"""`pdserve bench` end to end against a real `pdserve sim-engine` (default timings)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from pdserve.bench.report import KEYS
from testkit import PDSERVE

WORKLOAD = """\
arrival: {process: constant, rate: 10}
input_tokens: {dist: uniform, min: 32, max: 128}
output_tokens: {dist: uniform, min: 8, max: 24}
"""


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PDSERVE, "bench", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_bench_against_a_sim_engine(tmp_path: Path, bench_engine: Callable[..., str]) -> None:
    url = bench_engine()
    workload = tmp_path / "w.yaml"
    workload.write_text(WORKLOAD)
    common = ["--url", url, "--model", "sim", "--workload", str(workload), "--seed", "3"]

    out = tmp_path / "report.json"
    png = tmp_path / "report.png"
    done = _bench(
        tmp_path,
        *common,
        "--duration",
        "3",
        "--output",
        str(out),
        "--slo",
        "ttft_p90=10s,itl_p90=5s",
        "--plot",
        str(png),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert tuple(report) == KEYS
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 20_000
    # Each request went out under an id of its own, which the engine logged.
    log = tmp_path / f"bench-sim-{url.rsplit(':', 1)[1]}.log"
    ids = [json.loads(ln).get("x_request_id") for ln in log.read_text().splitlines() if "{" in ln]
    ids = [i for i in ids if i]
    assert len(set(ids)) == 30 and all(re.fullmatch(r"bench-[0-9a-f]{8}-\d+", i) for i in ids)
    assert report["errors"] == {}
    assert report["requests"] == 30  # constant 10/s for 3 s
    for key in ("ttft_ms", "itl_ms", "e2e_ms"):
        assert set(report[key]) == {"p50", "p90", "p99"}
        assert 0 < report[key]["p50"] <= report[key]["p90"] <= report[key]["p99"]
    assert report["ttft_ms"]["p50"] < report["e2e_ms"]["p50"]
    assert report["output_tokens_per_s"] > report["requests_per_s"] * 8 * 0.9
    assert report["goodput"] == report["requests_per_s"] > 0
    assert "requests 30" in done.stdout

    impossible = tmp_path / "impossible.json"
    done = _bench(
        tmp_path,
        *common,
        "--duration",
        "1",
        "--rate",
        "5",
        "--output",
        str(impossible),
        "--slo",
        "ttft_p90=0.001ms",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(impossible.read_text())
    assert report["requests"] == 5 and report["errors"] == {}
    assert report["goodput"] == 0


def test_bench_closed_loop(tmp_path: Path, bench_engine: Callable[..., str]) -> None:
    url = bench_engine("--zero-cost")
    workload = tmp_path / "w.yaml"
    workload.write_text(WORKLOAD)
    out = tmp_path / "report.json"
    done = _bench(
        tmp_path,
        "--url",
        f"{url}/v1",
        "--model",
        "sim",
        "--workload",
        str(workload),
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert report["requests"] > 10  # far above the workload's 10/s: the loop is closed


def test_errors_by_kind(tmp_path: Path, bench_engine: Callable[..., str]) -> None:
    url = bench_engine("--zero-cost")
    workload = tmp_path / "w.yaml"
    workload.write_text(WORKLOAD)
    out = tmp_path / "report.json"
    done = _bench(
        tmp_path,
        "--url",
        url,
        "--model",
        "no-such-model",
        "--workload",
        str(workload),
        "--duration",
        "0.5",
        "--output",
        str(out),
    )
    assert done.returncode == 1
    assert "every request failed" in done.stderr
    report = json.loads(out.read_text())
    assert report["requests"] == 0
    assert report["errors"] == {"http_404": 5}


def test_bad_flags_and_workloads_are_one_line_exit_2(tmp_path: Path) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text(WORKLOAD.replace("rate: 10", "rate: 10, jitter: 1"))
    base = ["--url", "http://127.0.0.1:9", "--model", "m", "--duration", "1"]
    for args, message in [
        ([*base, "--workload", str(workload)], "arrival.jitter: unknown key"),
        ([*base, "--workload", str(tmp_path / "none.yaml")], "none.yaml"),
        (["--url", "x", "--model", "m", "--workload", str(workload)], "--duration"),
        ([*base, "--workload", str(workload), "--rate", "1", "--concurrency", "2"], "not allowed"),
        ([*base, "--workload", str(workload), "--slo", "ttft=1"], "--slo"),
        ([*base, "--workload", str(workload), "--plot", str(tmp_path / "r.svg")], "--plot"),
        ([*base, "--workload", str(workload), "--plot", "/nonexistent/r.png"], "no such folder"),
        ([*base, "--workload", str(workload), "--trace-dir", str(tmp_path)], "--trace-dir"),
    ]:
        done = _bench(tmp_path, *args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pdserve bench: "), done.stderr
        assert message in lines[0]
