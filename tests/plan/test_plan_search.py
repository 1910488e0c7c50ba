"""The search on its own (a fake evaluator) and the layouts it enumerates."""

from __future__ import annotations

from pdserve.plan.candidates import Candidate, at_cost
from pdserve.plan.search import Outcome, Space, search


def outcome(goodput: float, fraction: float) -> Outcome:
    return Outcome(goodput, fraction, {})


def test_layouts_use_exactly_the_count_with_power_of_two_tp() -> None:
    for gpus in range(1, 9):
        level = at_cost(gpus, 8)
        assert level and len(set(level)) == len(level)
        for c in level:
            assert c.accelerators == gpus
            assert {c.prefill_tp, c.decode_tp} <= {1, 2, 4, 8}
            assert c.decode >= 1 and (c.aggregated or c.prefill >= 1)
    assert Candidate(0, 1, 1, 4) in at_cost(4, 8)
    assert Candidate(0, 1, 1, 4) not in at_cost(4, 2)
    assert all(c.aggregated for c in at_cost(4, 8, pd=False))
    assert not any(c.aggregated for c in at_cost(4, 8, aggregated=False))
    assert Candidate(3, 1, 1, 1).ratio == "3:1" and Candidate(2, 2, 2, 1).ratio == "2:1"


def test_cheapest_count_wins_and_dearer_ones_are_not_run() -> None:
    runs: list[Candidate] = []

    def evaluate(c: Candidate) -> Outcome:
        runs.append(c)
        if c == Candidate(2, 1, 1, 1):
            return outcome(5.0, 0.95)
        if c == Candidate(0, 1, 3, 1):
            return outcome(4.0, 0.92)
        return outcome(float(c.accelerators), 0.5)

    shown: list[tuple[int, int]] = []
    result = search(Space(8, 8), evaluate, 0.9, lambda t, i, n: shown.append((i, n)))
    assert result.winner is not None and result.winner.candidate == Candidate(2, 1, 1, 1)
    assert result.runner_up is not None and result.runner_up.candidate == Candidate(0, 1, 3, 1)
    assert max(c.accelerators for c in runs) == 3
    assert len(shown) == len(runs) == len(result.tried)
    assert shown[-1][0] == shown[-1][1]


def test_runner_up_is_the_best_cheaper_layout_when_alone_at_its_count() -> None:
    def evaluate(c: Candidate) -> Outcome:
        return outcome(2.0, 0.95) if c.accelerators == 2 and not c.aggregated else outcome(1, 0.1)

    result = search(Space(4, 1, aggregated=True, pd=True), evaluate, 0.9)
    assert result.winner is not None and result.winner.candidate == Candidate(1, 1, 1, 1)
    assert result.runner_up is not None and result.runner_up.candidate.accelerators == 2


def test_threshold_decides_and_no_winner_says_so() -> None:
    result = search(Space(3, 2), lambda c: outcome(c.accelerators, 0.8), 0.9)
    assert result.winner is None
    assert result.runner_up is not None and result.runner_up.candidate.accelerators == 3
    easy = search(Space(3, 2), lambda c: outcome(c.accelerators, 0.8), 0.8)
    assert easy.winner is not None and easy.winner.candidate == Candidate(0, 1, 1, 1)
