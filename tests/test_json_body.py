"""Any body a client sends parses, or fails as a ValueError with one line."""

from __future__ import annotations

import pytest

from pdserve import json_body


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 100_000, "JSON nested too deeply"),
        (b"{oops", "Expecting property name"),
        (b"\xff\xfe{", "utf-"),
    ],
)
def test_every_failure_is_a_value_error(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        json_body.loads(raw)


def test_a_body_parses() -> None:
    assert json_body.loads(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
