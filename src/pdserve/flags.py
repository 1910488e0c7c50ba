"""Command-line flags that behave like Go's `flag` package.

Manifests written for llm-d and the GIE EPP pass booleans as `--flag`,
`--flag=true` or `--flag=false`; argparse alone only knows the first form.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import NoReturn

from pdserve.errors import UserError

_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def add_bool(
    parser: argparse.ArgumentParser, name: str, default: bool = False, help: str = ""
) -> None:
    """Add `--name`, `--name=true|false`; only the `=` form takes a value."""
    parser.add_argument(
        name, nargs="?", const=True, default=default, type=parse_bool, metavar="BOOL", help=help
    )


def env_default(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def number(
    kind: type[float] | type[int], minimum: float = 0.0, inclusive: bool = False
) -> Callable[[str], float | int]:
    """An argparse type: a number above `minimum` (or at it, `inclusive`)."""

    def convert(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            sign = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {sign} {minimum:g}, got {text}")
        return value

    return convert


def duration(text: str) -> float:
    """framework.parse_duration for argparse, so a flag and a config parameter read the same
    text alike; a bad value is a usage error naming it."""
    from pdserve.epp.framework import parse_duration  # pydantic, only once a flag is read

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line and exit 2 (the dispatcher prints `pdserve CMD: ...`), like
    every other user error of pdserve, not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


class GoStyleParser(OneLineParser):
    """argparse that also accepts single-dash long flags (`-port=8000`), as Go does."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        if args is not None:
            args = [_long(a, self) for a in args]
        return super().parse_args(args, namespace)


def _long(arg: str, parser: argparse.ArgumentParser) -> str:
    if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
        candidate = "-" + arg.split("=", 1)[0]
        if candidate in parser._option_string_actions:
            return "-" + arg
    return arg
