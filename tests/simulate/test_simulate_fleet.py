"""The simulation itself: reproducible, bench's report, P/D where the EPP says, load shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from simkit import LONG_PROMPTS, fleet

from pdserve.bench import report
from pdserve.bench.generator import PlannedRequest
from pdserve.bench.workload import parse
from pdserve.engines.sim.scheduler import Request
from pdserve.simulate.fleet import load_fleet
from pdserve.simulate.flight import Flight
from pdserve.simulate.link import make_link
from pdserve.simulate.simulator import Options, Simulation


def simulate(
    manifest: Path, workload: dict[str, Any], **options: Any
) -> tuple[dict[str, Any], Simulation]:
    f = load_fleet(manifest)
    sim = Simulation(f, parse(workload), Options(**options), make_link(f.pools[-1].profile))
    results, elapsed = sim.run()
    return report.build(results, elapsed), sim


def test_same_seed_same_report_other_seed_other(tmp_path: Path) -> None:
    manifest = fleet(tmp_path, 2, 2)
    first, _ = simulate(manifest, LONG_PROMPTS, seed=3, duration=20)
    again, _ = simulate(manifest, LONG_PROMPTS, seed=3, duration=20)
    other, _ = simulate(manifest, LONG_PROMPTS, seed=4, duration=20)
    assert first == again
    assert first != other


def test_report_has_bench_keys_and_counts_every_request(tmp_path: Path) -> None:
    summary, sim = simulate(fleet(tmp_path, 1, 1), LONG_PROMPTS, duration=10)
    assert tuple(summary) == report.KEYS
    assert summary["requests"] == sim.counts.arrived > 5
    # --duration bounds the arrivals, as bench's; the run lasts until the last one is done.
    last = max(r.planned.at for r in sim.results)
    assert 8 < last < 10 and last + 0.1 < summary["duration_s"]
    assert summary["errors"] == {}
    for key in ("ttft_ms", "itl_ms", "e2e_ms"):
        s = summary[key]
        assert 0 < s["p50"] <= s["p90"] <= s["p99"]


def test_long_prompts_are_prefilled_on_the_prefill_engines(tmp_path: Path) -> None:
    _, sim = simulate(fleet(tmp_path, 2, 2), LONG_PROMPTS, duration=10)
    steps = {e.name: e.steps for e in sim.engines}
    assert steps["prefill-0"] and steps["prefill-1"], steps  # load spread over both
    prefilled = sum(e.blocks.queries for e in sim.engines if e.name.startswith("prefill"))
    assert prefilled >= 3000 * sim.counts.arrived  # every prompt looked up there
    assert not any(e.sched.leases for e in sim.engines), "a producer's lease was never freed"


@pytest.mark.parametrize("prefill", [1, None], ids=["pd", "aggregated"])
def test_ttft_rises_with_rate(tmp_path: Path, prefill: int | None) -> None:
    manifest = fleet(tmp_path, prefill, 1)
    ttft = []
    for rate in (0.5, 3.0, 6.0):
        workload = {**LONG_PROMPTS, "arrival": {"process": "poisson", "rate": rate}}
        summary, _ = simulate(manifest, workload, duration=20)
        ttft.append(summary["ttft_ms"]["p90"])
    assert ttft[0] < ttft[1] < ttft[2], ttft


def test_pd_keeps_decode_smooth_under_long_prompts(tmp_path: Path) -> None:
    """The P/D claim in miniature: long prefills on their own engine do not stall the
    decode batch, so ITL p99 is lower than on two aggregated engines with the same load."""
    workload = {**LONG_PROMPTS, "arrival": {"process": "poisson", "rate": 3}}
    pd, _ = simulate(fleet(tmp_path, 1, 1), workload, duration=30)
    agg, _ = simulate(fleet(tmp_path, None, 2), workload, duration=30)
    assert pd["itl_ms"]["p99"] < agg["itl_ms"]["p99"], (pd["itl_ms"], agg["itl_ms"])


def test_requests_bound_and_scrapes_age(tmp_path: Path) -> None:
    summary, sim = simulate(fleet(tmp_path, 1, 1), LONG_PROMPTS, max_requests=7)
    assert summary["requests"] == 7
    updated = [e.endpoint.metrics.updated for e in sim.engines]
    assert all(u is not None and u <= sim.counts.now for u in updated)


PRECISE = {
    "apiVersion": "llm-d.ai/v1alpha1",
    "kind": "EndpointPickerConfig",
    "plugins": [
        {"type": "precise-prefix-cache-producer",
         "parameters": {"tokenProcessorConfig": {"blockSize": 16},
                        "kvEventsConfig": {"zmqEndpoint": "tcp://*:5557"}}},
        {"type": "prefix-cache-scorer",
         "parameters": {"prefixMatchInfoProducerName": "precise-prefix-cache-producer"}},
        {"type": "max-score-picker"},
        {"type": "single-profile-handler"},
    ],
    "schedulingProfiles": [
        {"name": "default", "plugins": [{"pluginRef": "prefix-cache-scorer"},
                                        {"pluginRef": "max-score-picker"}]}
    ],
}  # fmt: skip


def test_precise_prefix_routing_follows_the_engines_kv_events(tmp_path: Path) -> None:
    """As under `up`: the engines' KV events reach the config's precise producer, so each
    shared prefix's requests gather on the engine that cached it."""
    import yaml

    manifest = fleet(tmp_path, None, 2)
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["router"]["scheduler"] = {"config": {"inline": PRECISE}}
    manifest.write_text(yaml.safe_dump(doc))
    workload = {
        "api": "completions",
        "arrival": {"process": "constant", "rate": 2},
        "shared_prefix": {"groups": 2, "prefix_tokens": 400, "suffix_tokens": 20},
        "output_tokens": 4,
    }
    f = load_fleet(manifest)
    assert f.events_to is not None
    sim = Simulation(f, parse(workload), Options(duration=20), make_link(f.pools[-1].profile))
    placed: dict[int, list[int]] = {}
    submit = sim._submit

    def record(index: int, req: Any, flight: Any, now: float, *made: Any) -> None:
        placed.setdefault(flight.planned.group, []).append(index)
        submit(index, req, flight, now, *made)

    sim._submit = record  # type: ignore[method-assign]
    sim.run()
    assert f.events_to.size() > 0
    for group, engines in placed.items():
        later = engines[1:]
        assert later.count(engines[1]) >= 0.9 * len(later), (group, engines)


def test_the_prefill_pool_can_have_a_profile_of_its_own(tmp_path: Path) -> None:
    slow = tmp_path / "slow.yaml"
    slow.write_text("prefill_ms_per_token: 1.0\n")
    manifest = fleet(tmp_path, 1, 1)
    both = load_fleet(manifest, str(slow))
    split = load_fleet(manifest, None, prefill_profile_path=str(slow))
    assert [p.role for p in split.pools] == ["prefill", "decode"]
    assert both.pools[0].profile.prefill_ms_per_token == 1.0
    assert split.pools[0].profile == both.pools[0].profile
    assert split.pools[1].profile.prefill_ms_per_token != 1.0  # the decode pool's default


def test_gauges_show_what_a_step_left_from_its_end_as_vllm(tmp_path: Path) -> None:
    """vLLM makes its stats when a step's outputs are processed: the requests it held
    before the step, less those the step finished; one that arrives while the step runs,
    or that wakes an idle engine, is counted from the next step's end."""
    f = load_fleet(fleet(tmp_path, None, 1))
    sim = Simulation(f, parse(LONG_PROMPTS), Options(), make_link(f.pools[-1].profile))
    engine = sim.engines[0]

    def submit(i: int, now: float) -> None:
        req = Request(id=f"d{i}", prompt=list(range(1, 600)), max_tokens=4, arrival=now)
        planned = PlannedRequest(index=i, at=now, max_tokens=4, input_tokens=599)
        sim._submit(0, req, Flight(planned, req, decode_engine=0), now)

    def run_step(now: float) -> float:
        """The engine's queued step event, run; the time its step ends."""
        at, _, _, subject = sim.queue.pop()
        assert subject is engine and at == now
        sim._step(engine, now)
        assert engine.pending is not None
        return now + engine.pending.duration

    submit(0, 0.0)  # wakes the idle engine: its step starts at once
    end = run_step(0.0)
    assert engine.sched.running and engine.gauges[:2] == (0, 0)
    submit(1, end / 2)  # arrives mid-step: queued, not yet counted
    assert engine.gauges[:2] == (0, 0)
    end2 = run_step(end)  # the first step ends: it left one running, the arrival unseen
    assert engine.gauges[:2] == (1, 0) and len(engine.sched.running) == 2
    run_step(end2)  # the second step ends: both counted
    assert engine.gauges[:2] == (2, 0)
