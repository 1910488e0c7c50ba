"""Request ids: which a log line may carry whole, how an unfit one is shown, and the
in-flight book that gives a duplicate its own id."""

from __future__ import annotations

import pytest

from pdserve import request_ids
from pdserve.request_ids import InFlight


@pytest.mark.parametrize(
    ("rid", "fit"),
    [("abc-123_X.y:z", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("a b", False), ("a\nb", False), ("a\x07", False), ("é", False)],
)  # fmt: skip
def test_only_bounded_visible_ascii_is_fit(rid: str, fit: bool) -> None:
    assert request_ids.fit(rid) is fit


def test_an_unfit_id_is_shown_escaped_and_cut_short() -> None:
    assert request_ids.shown("a\nb\x07") == "a\\nb\\x07"
    long = request_ids.shown("y" * 500)
    assert long == "y" * 64 + "...(500 chars)"
    assert request_ids.loggable("ok-1") == "ok-1" and request_ids.loggable(None) is None


def test_a_duplicate_in_flight_gets_the_first_free_suffix() -> None:
    live = InFlight()
    assert [live.claim("r") for _ in range(3)] == ["r", "r-2", "r-3"]
    live.release("r-2")
    assert live.claim("r") == "r-2"
    live.release("r")
    assert live.claim("r") == "r"


def test_the_book_is_bounded_oldest_out() -> None:
    live = InFlight(limit=2)
    for rid in ("a", "b", "c"):
        live.claim(rid)
    assert "a" not in live and len(live) == 2 and live.claim("a") == "a"
