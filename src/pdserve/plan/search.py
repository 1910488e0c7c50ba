"""The search, apart from the simulator: layouts by accelerator count, cheapest first.

A layout is judged by `evaluate` (a simulation, in `plan`; anything in the tests). The
search stops after the first count at which some layout meets the SLOs: every layout with
more accelerators costs more, so none of them could be the cheapest, and they are not run.
Within that count the layout with the highest goodput wins; the runner-up is the next best
there, else the best of the cheaper counts (which all missed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pdserve.plan.candidates import Candidate, at_cost


@dataclass(frozen=True)
class Outcome:
    goodput: float  # requests/s meeting every SLO, as bench reports it
    fraction: float  # of the requests sent, those meeting every SLO
    report: dict[str, object]  # bench's report keys


@dataclass(frozen=True)
class Trial:
    candidate: Candidate
    outcome: Outcome
    meets: bool


@dataclass(frozen=True)
class Space:
    accelerators: int
    max_tp: int
    aggregated: bool = True
    pd: bool = True


@dataclass(frozen=True)
class Result:
    winner: Trial | None  # None: no layout within the accelerators met the SLOs
    runner_up: Trial | None
    tried: tuple[Trial, ...]


Evaluate = Callable[[Candidate], Outcome]
Progress = Callable[[Trial, int, int], None]  # the trial, its place at its count, of how many


def search(
    space: Space, evaluate: Evaluate, threshold: float, progress: Progress | None = None
) -> Result:
    tried: list[Trial] = []
    for gpus in range(1, space.accelerators + 1):
        level = at_cost(gpus, space.max_tp, space.aggregated, space.pd)
        trials = []
        for i, candidate in enumerate(level, 1):
            outcome = evaluate(candidate)
            trial = Trial(candidate, outcome, outcome.fraction >= threshold)
            trials.append(trial)
            if progress is not None:
                progress(trial, i, len(level))
        tried += trials
        if any(t.meets for t in trials):
            return _decide(trials, tried)
    return Result(None, _best(tried), tuple(tried))


def _decide(level: list[Trial], tried: list[Trial]) -> Result:
    meeting = [t for t in level if t.meets]
    winner = max(meeting, key=rank)
    others = [t for t in level if t is not winner]
    cheaper = [t for t in tried if t.candidate.accelerators < winner.candidate.accelerators]
    return Result(winner, _best(others) or _best(cheaper), tuple(tried))


def _best(trials: list[Trial]) -> Trial | None:
    return max(trials, key=rank, default=None)


def rank(trial: Trial) -> tuple[float, float, int]:
    """Higher goodput, then a larger share meeting the SLOs, then fewer engines (less to
    run and scale)."""
    c = trial.candidate
    return (trial.outcome.goodput, trial.outcome.fraction, -(c.prefill + c.decode))
