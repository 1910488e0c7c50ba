"""Pydantic validation errors as the one-line problems pdserve prints.

Manifests, workload files and EPP configs each say a problem in their own words (a
manifest has fields, a workload keys, a plugin parameters), but they locate it the same way
and read an error's details the same way; this module holds that shared part, and each
loader passes its wording.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import ErrorDetails


def path_of(loc: tuple[Any, ...], skip: Collection[str] = ()) -> str:
    """A location as the user writes it (`spec.template.containers[0].name`).

    Model validators' frames (`function-...`) and the names in `skip` (a tagged union's
    tags) are pydantic's, not the document's, so they are left out; a key that is not
    printable is quoted, so its problem stays on one line.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in skip:
            continue
        else:
            text = str(part)
            out += ("." if out else "") + (text if text.isprintable() else repr(text))
    return out


def reason(err: ErrorDetails) -> str:
    """What a validator said, without pydantic's `Value error, ` prefix."""
    if err["type"] == "value_error":
        return str((err.get("ctx") or {}).get("error", err["msg"]))
    return str(err["msg"])


class _Details(dict[str, Any]):
    """An error's context for a template: a key it lacks reads as `?`, not a KeyError."""

    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True)
class Wording:
    """A loader's words for pydantic's error kinds.

    `templates` maps an error type to a `str.format` template over the error's context
    and its `input`; a kind without one is a validator's own reason, or pydantic's message
    (lower-cased when `lower` is set, for loaders whose lines are all lower case).
    """

    templates: Mapping[str, str] = field(default_factory=dict)
    lower: bool = False

    def describe(self, err: ErrorDetails) -> str:
        template = self.templates.get(err["type"])
        if template is not None:
            return template.format_map(_Details(err.get("ctx") or {}, input=err.get("input")))
        if err["type"] == "value_error":
            return reason(err)
        return str(err["msg"]).lower() if self.lower else str(err["msg"])
