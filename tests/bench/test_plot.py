"""The plot's series come from the results: each chunk's arrival rebuilt from TTFT and the
gaps, tokens and requests binned by the second they arrived, failures apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pdserve.bench import plot
from pdserve.bench.client import Result
from pdserve.bench.generator import PlannedRequest
from pdserve.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def result(index: int, sent: float, **fields: Any) -> Result:
    planned = PlannedRequest(index, sent, max_tokens=4, input_tokens=8, prompt="x")
    return Result(planned, sent, request_id=f"bench-t-{index}", **fields)


RESULTS = [
    # Chunks at 0.5, 0.7, 1.1 s: 6 tokens (usage) over 3 chunks, done at 1.2 s.
    result(0, 0.2, ttft_ms=300.0, itl_ms=[200.0, 400.0], e2e_ms=1000.0, output_tokens=6),
    # One chunk at 1.5 s, done at 1.6 s.
    result(1, 1.4, ttft_ms=100.0, e2e_ms=200.0, output_tokens=1),
    result(2, 1.8, e2e_ms=1500.0, error="http_503"),  # failed at 3.3 s
]


def test_series_come_from_the_results() -> None:
    data = plot.series(RESULTS)
    assert plot.chunk_times(RESULTS[0]) == pytest.approx([0.5, 0.7, 1.1])
    assert data.ttft == [(0.2, 300.0), (1.4, 100.0)]
    assert data.e2e == [(0.2, 1000.0), (1.4, 200.0)]
    assert [t for t, _ in data.itl] == pytest.approx([0.7, 1.1])
    assert [ms for _, ms in data.itl] == [200.0, 400.0]
    assert data.errors == pytest.approx([3.3])
    assert data.requests_per_s == [0, 2, 0, 0]  # both done in [1, 2); the run ends at 3.3 s
    assert data.tokens_per_s == pytest.approx([4.0, 3.0, 0.0, 0.0])
    assert sum(data.tokens_per_s) == sum(r.output_tokens for r in RESULTS)


def test_cdf() -> None:
    assert plot.cdf([30.0, 10.0, 20.0, 40.0]) == ([10.0, 20.0, 30.0, 40.0], [0.25, 0.5, 0.75, 1.0])


def test_write_draws_a_png(tmp_path: Path) -> None:
    out = tmp_path / "run.png"
    plot.check_path(str(out))
    plot.write(RESULTS, str(out), "test run")
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 20_000  # four panels, not an empty canvas
    plot.write([], str(tmp_path / "empty.png"), "nothing measured")
    assert (tmp_path / "empty.png").read_bytes().startswith(PNG)


def test_bad_paths_are_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"expected a \.png"):
        plot.check_path(str(tmp_path / "run.jpg"))
    with pytest.raises(UserError, match="no such folder"):
        plot.check_path(str(tmp_path / "none" / "run.png"))
