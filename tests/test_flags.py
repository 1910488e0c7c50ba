import argparse

import pytest

from pdserve.errors import UserError
from pdserve.flags import GoStyleParser, add_bool, duration


def _parser() -> argparse.ArgumentParser:
    parser = GoStyleParser(prog="x")
    add_bool(parser, "--secure-proxy", default=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout", type=duration, default=0.0)
    return parser


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], True),
        (["--secure-proxy"], True),
        (["--secure-proxy=false"], False),
        (["--secure-proxy=true"], True),
        (["-secure-proxy=false"], False),
    ],
)
def test_go_bool_forms(argv: list[str], expected: bool) -> None:
    assert _parser().parse_args(argv).secure_proxy is expected


def test_single_dash_long_flag() -> None:
    assert _parser().parse_args(["-port=9000"]).port == 9000


def test_bad_bool_is_a_one_line_user_error() -> None:
    """The dispatcher prints it as `pdserve CMD: ...` and exits 2 (tests/test_cli.py)."""
    with pytest.raises(UserError, match=r"^argument --secure-proxy: invalid boolean value"):
        _parser().parse_args(["--secure-proxy=maybe"])


@pytest.mark.parametrize(("text", "seconds"), [("1m30s", 90.0), ("200ms", 0.2), ("0", 0.0)])
def test_duration_reads_go_durations(text: str, seconds: float) -> None:
    assert _parser().parse_args([f"--timeout={text}"]).timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "-1s", "1x"])
def test_bad_duration_is_a_one_line_user_error(text: str) -> None:
    """A bare number has no unit, as in Go: the EPP's and `pdserve up`'s flags refuse it alike."""
    with pytest.raises(UserError, match=r"^argument --timeout: not a duration"):
        _parser().parse_args([f"--timeout={text}"])
