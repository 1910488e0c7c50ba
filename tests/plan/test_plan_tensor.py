"""Tensor parallelism changes what the simulator models: a TP group's envelope, and a
manifest's parallelism.tensor reaching the fleet the simulator runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from pdserve.bench import report
from pdserve.bench.workload import parse
from pdserve.engines.sim.profile import Profile
from pdserve.plan.candidates import Candidate
from pdserve.plan.manifest import service
from pdserve.simulate.fleet import load_fleet
from pdserve.simulate.link import make_link
from pdserve.simulate.simulator import Options, Simulation
from pdserve.simulate.tensor import speedup, tensor_parallel

MODEL = "builtin://smollm2-135m-instruct"


def test_tp_group_computes_faster_but_less_than_linearly_and_holds_more_kv() -> None:
    one = Profile()
    four = tensor_parallel(one, 4)
    assert 1 < speedup(2) < 2 < speedup(4) < 4
    assert four.prefill_ms_per_token == one.prefill_ms_per_token / speedup(4)
    assert four.decode_seconds(8, 10_000) < one.decode_seconds(8, 10_000) / 3
    assert four.prefill_overhead_ms == one.prefill_overhead_ms
    assert four.num_blocks == 4 * one.num_blocks
    assert tensor_parallel(one, 1) == one


def fleet_file(tmp_path: Path, candidate: Candidate) -> Path:
    path = tmp_path / f"{candidate.label.replace(' ', '_')}.yaml"
    path.write_text(yaml.safe_dump(service(candidate, "tp", MODEL, "smollm2")))
    return path


def test_manifest_tensor_reaches_the_simulated_pools(tmp_path: Path) -> None:
    fleet = load_fleet(fleet_file(tmp_path, Candidate(2, 1, 1, 4)))
    prefill, decode = fleet.pools
    assert prefill.profile == Profile() and prefill.replicas == 2
    assert decode.profile == tensor_parallel(Profile(), 4) and decode.replicas == 1


def test_tp2_decodes_faster_in_simulation(tmp_path: Path) -> None:
    workload = parse(
        {
            "api": "chat",
            "arrival": {"process": "poisson", "rate": 4},
            "input_tokens": {"dist": "uniform", "min": 32, "max": 64},
            "output_tokens": {"dist": "uniform", "min": 32, "max": 64},
        }
    )
    itl = []
    for tp in (1, 2):
        fleet = load_fleet(fleet_file(tmp_path, Candidate(0, 1, 1, tp)))
        link = make_link(fleet.pools[-1].profile)
        results, elapsed = Simulation(fleet, workload, Options(0, None, 20), link).run()
        itl.append(report.build(results, elapsed)["itl_ms"]["p50"])
    assert itl[1] < itl[0] / 1.5, itl
