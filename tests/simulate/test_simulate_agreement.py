"""Issue 14's done-when: `pdserve simulate` and `pdserve bench` against `pdserve up --engine
sim` agree on TTFT and ITL p50 and p90 within 10%, same manifest, profile and workload.

The profile is slower than the default (a bigger model): the real stack adds a few ms per
request that no model of the engine holds (HTTP hops through Envoy, the EPP and the sidecar,
tokenizing twice, the NIXL handshake, timer slack), which at the default profile's 8 ms
decode steps and ~20 ms prefills is more than 10% on a shared machine; here it is not.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from simkit import fleet, workload

from testkit import PDSERVE, REPO

PROFILE = """\
prefill_ms_per_token: 1.0
prefill_overhead_ms: 20
decode_base_ms: 80
decode_ms_per_seq: 0.5
kv_pull_overhead_ms: 40
"""
# At 3/s a quarter of the decode engine's steps admit a pulled request and run slower, so
# ITL p90 lies inside those steps' mode; at 1.5/s (14%) it sat on the edge between the
# two modes and moved 91-101 ms between runs of the same service.
WORKLOAD = {
    "api": "chat",
    "arrival": {"process": "constant", "rate": 3},
    "input_tokens": {"dist": "uniform", "min": 100, "max": 300},
    "output_tokens": {"dist": "uniform", "min": 16, "max": 32},
}
KV = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'


def run(*args: str) -> dict[str, object]:
    out = Path(args[-1])
    done = subprocess.run([*PDSERVE, *args], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(out.read_text())
    return report


def test_simulate_agrees_with_bench_on_up(
    tmp_path: Path, sim_service: Callable[[Path], str]
) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    args = ["--served-model-name", "smollm2", "--kv-transfer-config", KV, "--profile", str(profile)]
    manifest = fleet(tmp_path, 1, 1, args)
    wl = str(workload(tmp_path, "agree", WORKLOAD))
    url = sim_service(manifest)
    common = ["--workload", wl, "--duration", "20", "--seed", "5"]
    real = run("bench", "--url", url, "--model", "smollm2", *common, "--output",
               str(tmp_path / "bench.json"))  # fmt: skip
    sim = run("simulate", str(manifest), *common, "--output", str(tmp_path / "sim.json"))
    assert real["requests"] == sim["requests"] and real["errors"] == sim["errors"] == {}
    for key in ("ttft_ms", "itl_ms"):
        for pct in ("p50", "p90"):
            measured, simulated = real[key][pct], sim[key][pct]  # type: ignore[index]
            print(  # the figures, for `pytest -s` and docs/benchmarks.md
                f"{key} {pct}: bench {measured:.1f}, simulate {simulated:.1f}"
                f" ({simulated / measured - 1:+.1%})"
            )
            assert abs(simulated - measured) <= 0.10 * measured, (key, pct, real, sim)
