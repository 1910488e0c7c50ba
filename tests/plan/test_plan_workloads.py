"""`plan` on two contrasting workloads, through the simulator: long prompts with short
answers and short prompts with long answers get different prefill:decode ratios, and each
recommendation still has the highest goodput of every layout it tried under another seed.

Test-sized: a profile with 3x the prefill cost per token (so prompts of ~1k tokens load the
prefill side as ~3k would) and 16 sequences per engine (so 60 requests fill the decode
side), 3 accelerators, TP 1 (TP's own cost model is tested in test_plan_tensor.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pdserve.api import load
from pdserve.bench import slo
from pdserve.bench.workload import parse
from pdserve.plan.cli import write
from pdserve.plan.search import Result, Space, search
from pdserve.plan.simulation import Setup, Simulator, manifest

LONG_PROMPTS = {
    "api": "chat",
    "arrival": {"process": "poisson", "rate": 8},
    "input_tokens": {"dist": "uniform", "min": 800, "max": 1600},
    "output_tokens": {"dist": "uniform", "min": 8, "max": 32},
}
LONG_ANSWERS = {
    "api": "chat",
    "arrival": {"process": "poisson", "rate": 12},
    "input_tokens": {"dist": "uniform", "min": 32, "max": 128},
    "output_tokens": {"dist": "uniform", "min": 200, "max": 400},
}


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("plan") / "profile.yaml"
    path.write_text("prefill_ms_per_token: 0.15\nmax_num_seqs: 16\n")
    return str(path)


def plan(doc: dict[str, Any], profile: str) -> tuple[Simulator, Result]:
    setup = Setup(
        workload=parse(doc),
        objectives=slo.parse("ttft_p90=1s,itl_p90=50ms"),
        duration=None,
        requests=60,
        profile=profile,
        model_uri="builtin://smollm2-135m-instruct",
        model_name="smollm2",
        name="planned",
    )
    simulate = Simulator(setup)
    return simulate, search(Space(3, 1), lambda c: simulate(c, 0), 0.9)


@pytest.fixture(scope="module")
def planned(profile: str) -> dict[str, tuple[Simulator, Result]]:
    return {"prompts": plan(LONG_PROMPTS, profile), "answers": plan(LONG_ANSWERS, profile)}


def test_contrasting_workloads_get_different_ratios(
    planned: dict[str, tuple[Simulator, Result]],
) -> None:
    prompts, answers = planned["prompts"][1].winner, planned["answers"][1].winner
    assert prompts is not None and answers is not None
    assert prompts.candidate.ratio != answers.candidate.ratio
    # Long prompts need more prefill than decode; long answers no prefill pool to speak of.
    p = prompts.candidate
    assert not p.aggregated and p.prefill * p.prefill_tp > p.decode * p.decode_tp
    a = answers.candidate
    assert a.aggregated or a.prefill * a.prefill_tp < a.decode * a.decode_tp
    for _, result in planned.values():
        assert result.runner_up is not None and result.runner_up.candidate != (
            result.winner.candidate if result.winner else None
        )


@pytest.mark.parametrize("workload", ["prompts", "answers"])
def test_winner_beats_every_layout_it_tried_under_another_seed(
    planned: dict[str, tuple[Simulator, Result]], workload: str
) -> None:
    simulate, result = planned[workload]
    assert result.winner is not None and len(result.tried) > 1
    again = {t.candidate: simulate(t.candidate, 1).goodput for t in result.tried}
    mine = again.pop(result.winner.candidate)
    assert all(mine > other for other in again.values()), (mine, again)


def test_written_manifest_validates_and_describes_the_winner(
    planned: dict[str, tuple[Simulator, Result]], tmp_path: Path
) -> None:
    simulate, result = planned["prompts"]
    assert result.winner is not None
    path = tmp_path / "planned.yaml"
    write(path, manifest(simulate.setup, result.winner.candidate))
    (service,) = load(path)
    spec = service.spec
    assert spec is not None and spec.prefill is not None
    assert spec.prefill.replicas == result.winner.candidate.prefill
    assert spec.replicas == result.winner.candidate.decode
