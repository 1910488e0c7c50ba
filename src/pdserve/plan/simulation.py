"""One layout through the simulator (`pdserve simulate`'s Python API, not a process): its
manifest written to a scratch file and loaded as `simulate FILE` would, then run under the
workload with the given seed and judged by the SLOs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pdserve.bench import report, slo
from pdserve.bench.client import Result
from pdserve.bench.workload import Workload
from pdserve.plan.candidates import Candidate
from pdserve.plan.manifest import service
from pdserve.plan.search import Outcome
from pdserve.simulate.fleet import load_fleet
from pdserve.simulate.link import make_link
from pdserve.simulate.simulator import Options, Simulation
from pdserve.tokenization import Tokenizer


@dataclass(frozen=True)
class Setup:
    workload: Workload
    objectives: tuple[slo.Objective, ...]
    duration: float | None
    requests: int | None
    profile: str | None  # sim engine profile YAML; None: its defaults
    model_uri: str
    model_name: str
    name: str


def manifest(setup: Setup, candidate: Candidate) -> dict[str, Any]:
    return service(candidate, setup.name, setup.model_uri, setup.model_name)


class Simulator:
    """Runs layouts of one setup; every layout serves the same model, so its tokenizer is
    loaded once (and its memo of encoded words kept) rather than once a run."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.tokenizer: Tokenizer | None = None

    def __call__(self, candidate: Candidate, seed: int) -> Outcome:
        setup = self.setup
        with tempfile.TemporaryDirectory(prefix="pdserve-plan-") as folder:
            path = Path(folder) / "service.yaml"
            path.write_text(yaml.safe_dump(manifest(setup, candidate), sort_keys=False))
            fleet = load_fleet(path, setup.profile, self.tokenizer)
        self.tokenizer = fleet.tokenizer
        link = make_link(fleet.pools[-1].profile)
        options = Options(seed, setup.duration, setup.requests, ahead=True)
        results, elapsed = Simulation(fleet, setup.workload, options, link).run()
        summary = report.build(results, elapsed, setup.objectives)
        return Outcome(float(summary["goodput"]), _met(results, setup.objectives), summary)


def _met(results: list[Result], objectives: tuple[slo.Objective, ...]) -> float:
    """The share of all requests sent (failed ones too) that met every objective."""
    if not results:
        return 0.0
    good = sum(
        1
        for r in results
        if r.error is None
        and slo.met(objectives, r.e2e_ms if r.ttft_ms is None else r.ttft_ms, r.itl_ms, r.e2e_ms)
    )
    return good / len(results)
