"""The shared reading of pydantic errors: each loader's wording over one location rule."""

from __future__ import annotations

import pytest

from pdserve.bench.workload import parse
from pdserve.errors import UserError
from pdserve.validation_errors import Wording, path_of


def test_a_path_skips_validator_frames_and_union_tags_and_quotes_unprintable_keys() -> None:
    loc = ("arrival", "poisson", "function-after[x]", "a\nb", 0, "rate")
    assert path_of(loc, skip={"poisson"}) == "arrival.'a\\nb'[0].rate"


def test_a_template_without_its_context_key_says_so_instead_of_raising() -> None:
    wording = Wording({"greater_than": "must be > {gt}"})
    err = {"type": "greater_than", "loc": (), "msg": "x", "input": 1, "ctx": {}}
    assert wording.describe(err) == "must be > ?"  # type: ignore[arg-type]


def test_a_workload_key_with_a_newline_is_one_line() -> None:
    with pytest.raises(UserError) as caught:
        parse({"bad\nkey": 1})
    assert "\n" not in str(caught.value)
    assert "'bad\\nkey': unknown key" in str(caught.value)
