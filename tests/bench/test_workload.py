"""The workload format: every example loads; a mistake is one line naming its path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdserve.bench.workload import Bursts, Constant, Fixed, LogNormal, Poisson, load, parse
from pdserve.errors import UserError
from testkit import REPO

EXAMPLES = sorted((REPO / "examples" / "workloads").glob("*.yaml"))
BASE = {"arrival": {"process": "poisson", "rate": 2}, "input_tokens": 10, "output_tokens": 5}
RECORD = {"timestamp": 1, "input_tokens": 8, "output_tokens": 4}


def test_the_examples_issue_14_names_are_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"chat.yaml", "long-prompts.yaml", "long-answers.yaml", "shared-prefix.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_loads(path: Path) -> None:
    workload = load(path)
    assert workload.arrival is not None
    assert workload.output_tokens is not None


def test_every_section_parses() -> None:
    w = parse(
        {
            "api": "chat",
            "arrival": {"process": "bursts", "rate": 50, "size": 10, "period": 2},
            "output_tokens": {"dist": "lognormal", "mean": 100, "sigma": 0.5, "max": 400},
            "shared_prefix": {"groups": 4, "prefix_tokens": 100, "suffix_tokens": 10},
            "chat": {"turns": 3, "history": False, "conversations": 2},
            "lora": [{"name": "a", "weight": 2}, {"weight": 1}],
            "ignore_eos": False,
        }
    )
    assert isinstance(w.arrival, Bursts)
    assert isinstance(w.output_tokens, LogNormal)
    assert w.shared_prefix is not None
    assert isinstance(w.shared_prefix.suffix_tokens, Fixed)
    assert [a.name for a in w.lora] == ["a", None]


def test_a_bare_number_is_a_fixed_length() -> None:
    w = parse(BASE)
    assert w.input_tokens == Fixed(dist="fixed", value=10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arrival": {"process": "poisson", "rate": 2, "burst": 3}}, "arrival.burst: unknown key"),
        ({"extra": 1}, "extra: unknown key"),
        ({"arrival": {"process": "poison", "rate": 2}}, "arrival: must be one of"),
        ({"arrival": {"process": "constant", "rate": 0}}, "arrival.rate: must be > 0"),
        ({"input_tokens": {"dist": "uniform", "min": 9, "max": 3}}, "input_tokens: min must be"),
        ({"input_tokens": {"dist": "normal", "mean": 9}}, "input_tokens.std: required"),
        ({"lora": [{"name": "a", "wieght": 1}]}, "lora[0].wieght: unknown key"),
        ({"input_tokens": None}, "input_tokens: required"),
        (
            {"arrival": {"process": "bursts", "rate": 1, "size": 10, "period": 2}},
            "arrival: a burst (size / rate) must fit in its period",
        ),
        ({"chat": {"turns": 2}, "api": "completions"}, "chat: needs api: chat"),
    ],
)
def test_mistakes_are_one_line_naming_the_path(change: dict[str, object], message: str) -> None:
    doc = {**BASE, **change}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(UserError) as err:
        parse(doc, "w.yaml")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"w.yaml: {message}"), text


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("arrival: [unclosed\n")
    with pytest.raises(UserError, match=r"bad\.yaml: not YAML"):
        load(bad)
    with pytest.raises(UserError, match=r"missing\.yaml"):
        load(tmp_path / "missing.yaml")


def test_replay_reads_its_trace_beside_the_file(tmp_path: Path) -> None:
    lines = [
        {"timestamp": 10.0, "input_tokens": 20, "output_tokens": 5},
        {"timestamp": 10.5, "text": "hello there", "output_tokens": 3},
    ]
    (tmp_path / "trace.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "w.yaml").write_text("replay: {file: trace.jsonl, speed: 2}\n")
    w = load(tmp_path / "w.yaml")
    assert w.replay is not None
    assert len(w.replay.records) == 2


def test_a_bad_trace_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "trace.jsonl").write_text('{"timestamp": 1, "output_tokens": 4}\n')
    (tmp_path / "w.yaml").write_text("replay: {file: trace.jsonl}\n")
    with pytest.raises(UserError, match=r"trace\.jsonl:1: give exactly one of input_tokens"):
        load(tmp_path / "w.yaml")


def _trace(folder: Path, *records: dict[str, object]) -> Path:
    (folder / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "w.yaml").write_text("replay: {file: trace.jsonl}\n")
    return folder / "w.yaml"


def test_a_trace_record_carries_its_label(tmp_path: Path) -> None:
    w = load(_trace(tmp_path, {**RECORD, "label": "chat"}, RECORD))
    assert w.replay is not None
    assert [r.label for r in w.replay.records] == ["chat", None]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("", "label: must not be empty"),
        ("x" * 65, "label: must be at most 64 characters, got 65"),
        ("a\nb", "label: must not contain control characters"),
        ("a\x7fb", "label: must not contain control characters"),
        (5, "label: input should be a valid string"),
    ],
)
def test_a_bad_label_is_one_line_naming_it(tmp_path: Path, label: object, message: str) -> None:
    with pytest.raises(UserError) as err:
        load(_trace(tmp_path, RECORD, {**RECORD, "label": label}))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{tmp_path / 'trace.jsonl'}:2: {message}"), text


def test_a_label_of_64_printable_characters_is_fine(tmp_path: Path) -> None:
    label = "long prompts, 400 words ☂" + "x" * 39
    w = load(_trace(tmp_path, {**RECORD, "label": label}))
    assert w.replay is not None and w.replay.records[0].label == label


def test_replay_refuses_an_arrival_process() -> None:
    with pytest.raises(UserError, match="arrival: not allowed with replay"):
        parse({"replay": {"file": "t.jsonl"}, "arrival": {"process": "poisson", "rate": 1}})


def test_with_rate_sets_the_mean_rate() -> None:
    w = parse(BASE).with_rate(7)
    assert w.arrival == Poisson(process="poisson", rate=7)
    c = parse({**BASE, "arrival": {"process": "constant", "rate": 1}}).with_rate(3)
    assert c.arrival == Constant(process="constant", rate=3)
    b = parse({**BASE, "arrival": {"process": "bursts", "rate": 100, "size": 10, "period": 5}})
    arrival = b.with_rate(4).arrival
    assert isinstance(arrival, Bursts)
    assert arrival.size / arrival.period == pytest.approx(4)
