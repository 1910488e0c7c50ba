"""The generator: deterministic per seed, and its samples follow what the file says."""

from __future__ import annotations

import itertools
import random
import statistics
from typing import Any

import pytest

from pdserve.bench.generator import PlannedRequest, requests, sample
from pdserve.bench.text import WORDS, words
from pdserve.bench.workload import Workload, load, parse
from pdserve.tokenization import BuiltinTokenizer
from testkit import REPO

BASE: dict[str, Any] = {
    "arrival": {"process": "poisson", "rate": 20},
    "input_tokens": {"dist": "uniform", "min": 10, "max": 50},
    "output_tokens": {"dist": "normal", "mean": 40, "std": 10},
}


def _all(workload: Workload, seed: int = 0, duration: float = 50.0) -> list[PlannedRequest]:
    return list(requests(workload, seed, duration))


def test_same_seed_same_requests_other_seed_other_requests() -> None:
    w = load(REPO / "examples" / "workloads" / "chat.yaml")
    assert _all(w, 7, 20) == _all(w, 7, 20)
    assert _all(w, 7, 20) != _all(w, 8, 20)


def test_duration_bounds_the_offsets_and_offsets_ascend() -> None:
    plan = _all(parse(BASE), duration=10)
    times = [r.at for r in plan]
    assert times == sorted(times)
    assert times[-1] < 10
    assert [r.index for r in plan] == list(range(len(plan)))


@pytest.mark.parametrize(
    "arrival",
    [
        {"process": "poisson", "rate": 20},
        {"process": "constant", "rate": 20},
        {"process": "bursts", "rate": 200, "size": 40, "period": 2},
    ],
)
def test_the_mean_rate_is_the_files(arrival: dict[str, Any]) -> None:
    plan = _all(parse({**BASE, "arrival": arrival}), duration=200)
    assert len(plan) / 200 == pytest.approx(20, rel=0.05)


def test_poisson_gaps_are_exponential() -> None:
    times = [r.at for r in _all(parse(BASE), duration=500)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Exponential: the standard deviation equals the mean.
    assert statistics.stdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.05)


def test_bursts_come_in_bursts() -> None:
    arrival = {"process": "bursts", "rate": 100, "size": 5, "period": 1}
    times = [r.at for r in _all(parse({**BASE, "arrival": arrival}), duration=3)]
    assert times[:6] == pytest.approx([0, 0.01, 0.02, 0.03, 0.04, 1.0])


@pytest.mark.parametrize(
    ("dist", "mean", "low", "high"),
    [
        ({"dist": "fixed", "value": 33}, 33, 33, 33),
        ({"dist": "uniform", "min": 10, "max": 50}, 30, 10, 50),
        ({"dist": "normal", "mean": 200, "std": 30}, 200, 1, None),
        ({"dist": "lognormal", "mean": 150, "sigma": 0.5}, 150, 1, None),
        ({"dist": "normal", "mean": 20, "std": 50, "min": 5, "max": 60}, None, 5, 60),
    ],
)
def test_lengths_follow_their_distribution(
    dist: dict[str, Any], mean: float | None, low: int, high: int | None
) -> None:
    parsed = parse({**BASE, "output_tokens": dist}).output_tokens
    assert parsed is not None
    rng = random.Random(1)
    values = [sample(parsed, rng) for _ in range(20000)]
    if mean is not None:
        assert statistics.mean(values) == pytest.approx(mean, rel=0.03)
    assert min(values) >= low
    if high is not None:
        assert max(values) <= high
    if dist["dist"] == "normal" and "max" not in dist:
        assert statistics.stdev(values) == pytest.approx(dist["std"], rel=0.05)


def test_planned_lengths_are_sent() -> None:
    tok = BuiltinTokenizer()
    for r in _all(parse(BASE), duration=5):
        assert r.messages is not None
        assert len(tok.encode(r.messages[-1]["content"])) == r.input_tokens
        assert r.max_tokens >= 1


def test_words_are_one_builtin_token_each() -> None:
    tok = BuiltinTokenizer()
    assert all(len(tok.encode(w)) == 1 for w in WORDS)
    assert len(tok.encode(words(random.Random(0), 500))) == 500


def test_shared_prefix_groups_share_their_prefix() -> None:
    w = load(REPO / "examples" / "workloads" / "shared-prefix.yaml")
    plan = _all(w, duration=60)
    assert w.shared_prefix is not None
    by_group: dict[int, set[str]] = {}
    for r in plan:
        assert r.group is not None and r.messages is not None
        by_group.setdefault(r.group, set()).add(r.messages[0]["content"])
    assert len(by_group) == w.shared_prefix.groups
    assert all(len(prefixes) == 1 for prefixes in by_group.values())
    assert len({next(iter(p)) for p in by_group.values()}) == w.shared_prefix.groups
    # Suffixes are distinct, and the prefix is as long as the file says.
    assert len({r.messages[-1]["content"] for r in plan if r.messages}) == len(plan)
    tok = BuiltinTokenizer()
    assert len(tok.encode(plan[0].messages[0]["content"])) == w.shared_prefix.prefix_tokens  # type: ignore[index]


def test_shared_prefix_completions_start_with_the_prefix() -> None:
    doc = {
        "api": "completions",
        "arrival": {"process": "constant", "rate": 10},
        "shared_prefix": {"groups": 2, "prefix_tokens": 50, "suffix_tokens": 5},
        "output_tokens": 4,
    }
    plan = _all(parse(doc), duration=5)
    tok = BuiltinTokenizer()
    heads: dict[int | None, set[tuple[int, ...]]] = {}
    for r in plan:
        assert r.prompt is not None
        ids = tok.encode(r.prompt)
        assert len(ids) == 55
        heads.setdefault(r.group, set()).add(tuple(ids[:50]))
    assert set(heads) == {0, 1}
    assert all(len(h) == 1 for h in heads.values())
    assert heads[0] != heads[1]


def test_a_group_prefix_does_not_depend_on_order() -> None:
    doc = {
        "arrival": {"process": "poisson", "rate": 10},
        "shared_prefix": {"groups": 3, "prefix_tokens": 20, "suffix_tokens": 5},
        "output_tokens": 4,
    }
    a = {r.group: r.messages[0]["content"] for r in _all(parse(doc), 1, 10) if r.messages}
    b = {r.group: r.messages[0]["content"] for r in _all(parse(doc), 1, 30) if r.messages}
    assert a == {g: b[g] for g in a}


def test_multi_turn_resends_the_conversation() -> None:
    doc = {**BASE, "chat": {"turns": 3, "history": True, "conversations": 2}}
    plan = _all(parse(doc), duration=5)
    assert [(r.conversation, r.turn) for r in plan[:8]] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (0, 2),
        (1, 2),
        (2, 0),
        (3, 0),
    ]
    first, second, third = plan[0], plan[2], plan[4]
    assert first.messages and second.messages and third.messages
    assert len(first.messages) == 1 and len(second.messages) == 3 and len(third.messages) == 5
    assert second.messages[0] == first.messages[0]
    assert second.messages[1]["role"] == "assistant"
    assert third.messages[:3] == second.messages
    assert len(plan[6].messages or []) == 1  # a new conversation starts afresh


def test_multi_turn_without_history_sends_one_message() -> None:
    doc = {**BASE, "chat": {"turns": 3, "history": False}}
    assert all(len(r.messages or []) == 1 for r in _all(parse(doc), duration=5))


def test_lora_mix_follows_its_weights() -> None:
    doc = {**BASE, "lora": [{"name": "a", "weight": 3}, {"weight": 1}]}
    plan = _all(parse(doc), duration=200)
    share = sum(r.model == "a" for r in plan) / len(plan)
    assert share == pytest.approx(0.75, abs=0.03)
    assert {r.model for r in plan} == {"a", None}


def test_the_lora_mix_does_not_move_the_arrivals() -> None:
    plain = [r.at for r in _all(parse(BASE), duration=5)]
    mixed = [r.at for r in _all(parse({**BASE, "lora": [{"name": "a", "weight": 1}]}), duration=5)]
    assert plain == mixed


def test_replay_keeps_the_trace_times_scaled_by_speed(tmp_path: Any) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"timestamp": 100, "input_tokens": 7, "output_tokens": 3}\n'
        '{"timestamp": 104, "text": "a b c", "output_tokens": 2, "model": "x", "label": "q"}\n'
        '{"timestamp": 102, "input_tokens": 9, "output_tokens": 1}\n'
    )
    (tmp_path / "w.yaml").write_text("replay: {file: t.jsonl, speed: 2}\n")
    plan = _all(load(tmp_path / "w.yaml"), duration=10)
    assert [(r.at, r.input_tokens, r.max_tokens, r.model) for r in plan] == [
        (0.0, 7, 3, None),
        (1.0, 9, 1, None),
        (2.0, 3, 2, "x"),
    ]
    assert plan[2].messages == [{"role": "user", "content": "a b c"}]
    assert [r.label for r in plan] == [None, None, "q"]
    assert len(_all(load(tmp_path / "w.yaml"), duration=1.5)) == 2
