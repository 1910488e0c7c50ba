"""Arrivals made in a worker process: the same simulation, and no worker left behind."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from simkit import fleet

from pdserve.bench.client import Result
from pdserve.bench.generator import PlannedRequest
from pdserve.bench.workload import parse
from pdserve.simulate import ahead
from pdserve.simulate.fleet import load_fleet
from pdserve.simulate.link import make_link
from pdserve.simulate.simulator import Options, Simulation

CHAT = {
    "api": "chat",
    "arrival": {"process": "poisson", "rate": 40},
    "input_tokens": {"dist": "uniform", "min": 20, "max": 900},
    "output_tokens": {"dist": "uniform", "min": 1, "max": 40},
}


def simulation(tmp_path: Path, made_ahead: bool, **options: Any) -> Simulation:
    f = load_fleet(fleet(tmp_path, 2, 2))
    opts = Options(seed=5, ahead=made_ahead, **options)
    return Simulation(f, parse(CHAT), opts, make_link(f.pools[-1].profile))


def rows(results: list[Result]) -> list[tuple[Any, ...]]:
    return [
        (r.planned, r.sent_s, r.ttft_ms, r.itl_ms, r.e2e_ms, r.output_tokens, r.error)
        for r in results
    ]


def test_arrivals_made_ahead_give_the_same_simulation(tmp_path: Path) -> None:
    inline = simulation(tmp_path, False, max_requests=600)
    made = simulation(tmp_path, True, max_requests=600)
    assert rows(made.run()[0]) == rows(inline.run()[0])
    assert len(made.results) == 600
    counters = [[(e.steps, e.blocks.hits) for e in s.engines] for s in (inline, made)]
    assert counters[0] == counters[1]
    assert multiprocessing.active_children() == []


def test_a_simulation_that_fails_stops_its_worker(tmp_path: Path) -> None:
    sim = simulation(tmp_path, True, duration=60)
    real = sim._arrive

    def arrive(arrival: ahead.Arrival, now: float) -> None:
        if arrival.planned.index == 3:  # the worker is still making the minute's 2,400
            raise RuntimeError("an EPP plugin failed")
        real(arrival, now)

    sim._arrive = arrive  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="an EPP plugin failed"):
        sim.run()
    assert multiprocessing.active_children() == []


def test_the_workers_error_is_raised_in_the_simulation(tmp_path: Path) -> None:
    sim = simulation(tmp_path, True, max_requests=50)

    def tokens(planned: PlannedRequest) -> list[int]:
        if planned.index == 20:
            raise ValueError("chat template failed: no user message")
        return [1, 2, 3]

    sim.traffic.tokens = tokens  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="chat template failed"):
        sim.run()
    assert multiprocessing.active_children() == []
