"""`--slo` parsing, which requests count as good, and the report's keys and classes."""

from __future__ import annotations

import dataclasses

import pytest

from pdserve.bench import report, slo
from pdserve.bench.client import Result
from pdserve.bench.generator import PlannedRequest
from pdserve.bench.stats import percentile
from pdserve.errors import UserError

PLANNED = PlannedRequest(index=0, at=0.0, max_tokens=4, input_tokens=4)


def _result(
    ttft: float, itl: list[float], error: str | None = None, label: str | None = None
) -> Result:
    e2e = ttft + sum(itl)
    planned = dataclasses.replace(PLANNED, label=label)
    return Result(planned, 0.0, ttft, itl, e2e, len(itl) + 1, error)


def test_slo_units() -> None:
    assert slo.parse("ttft_p90=2s, itl_p99=50ms,e2e_p50=300") == (
        slo.Objective("ttft", 90, 2000),
        slo.Objective("itl", 99, 50),
        slo.Objective("e2e", 50, 300),
    )


@pytest.mark.parametrize("text", ["ttft=2s", "tpot_p90=1s", "ttft_p90=fast", "ttft_p0=1s", ""])
def test_bad_slo_is_one_line(text: str) -> None:
    with pytest.raises(UserError, match=r"^--slo: ") as err:
        slo.parse(text)
    assert "\n" not in str(err.value)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile([], 50) is None


def test_a_request_is_good_when_it_meets_every_objective() -> None:
    objectives = slo.parse("ttft_p90=100ms,itl_p50=10ms")
    assert slo.met(objectives, 90, [5, 5, 50], 150)  # one slow gap: the median is fine
    assert not slo.met(objectives, 110, [5], 115)
    assert not slo.met(objectives, 90, [20, 20, 5], 135)


def test_report_keys_and_goodput() -> None:
    results = [_result(50, [10, 10]), _result(500, [10]), _result(10, [], "http_503")]
    plain = report.build(results, 2.0)
    assert tuple(plain) == report.KEYS
    assert plain["requests"] == 2
    assert plain["errors"] == {"http_503": 1}
    assert plain["goodput"] == plain["requests_per_s"] == 1.0
    assert plain["output_tokens_per_s"] == 2.5
    assert set(plain["ttft_ms"]) == {"p50", "p90", "p99"}
    assert report.build(results, 2.0, slo.parse("ttft_p90=100ms"))["goodput"] == 0.5
    assert report.build(results, 2.0, slo.parse("ttft_p90=1ms"))["goodput"] == 0.0


def test_an_empty_run_reports_nothing_measured() -> None:
    empty = report.build([], 1.0)
    assert empty["ttft_ms"] == {"p50": None, "p90": None, "p99": None}
    assert empty["requests"] == 0
    assert "requests 0" in report.text(empty)


def test_each_label_gets_its_own_figures() -> None:
    chats = [_result(t, [10, 12], label="chat") for t in (100, 110, 120)]
    longs = [_result(t, [], label="long") for t in (900, 1000)]
    built = report.build([*longs, *chats, _result(5000, [1])], 1.0)
    assert tuple(built) == (*report.KEYS, "classes")
    assert list(built["classes"]) == ["chat", "long"]
    chat, long = built["classes"]["chat"], built["classes"]["long"]
    assert (chat["ttft_ms"]["p50"], long["ttft_ms"]["p50"]) == (110, 950)
    assert chat["itl_ms"]["p50"] == 11 and long["itl_ms"]["p50"] is None
    assert chat["e2e_ms"]["p50"] == 132
    assert (chat["requests"], long["requests"]) == (3, 2)
    assert built["requests"] == 6  # the unlabelled one is in the run, in no class
    assert "class chat: 3 requests, ttft_ms p50 110.0 p90 118.0, itl_ms p50 11.0" in (
        report.text(built)
    )


def test_failed_requests_stay_out_of_their_class() -> None:
    results = [
        _result(100, [10], label="chat"),
        _result(9000, [90], "http_503", label="chat"),
        _result(7000, [], "timeout", label="long"),
    ]
    classes = report.build(results, 1.0)["classes"]
    assert classes["chat"]["ttft_ms"]["p90"] == 100 and classes["chat"]["requests"] == 1
    assert classes["long"] == {
        "ttft_ms": {"p50": None, "p90": None, "p99": None},
        "itl_ms": {"p50": None, "p90": None, "p99": None},
        "e2e_ms": {"p50": None, "p90": None, "p99": None},
        "requests": 0,
    }
    assert "class long: 0 requests, ttft_ms p50 - p90 -" in report.text(report.build(results, 1.0))


def test_without_labels_there_are_no_classes() -> None:
    built = report.build([_result(50, [10]), _result(10, [], "http_503")], 1.0)
    assert "classes" not in built
    assert "class " not in report.text(built)
