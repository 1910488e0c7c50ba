"""A manifest file converted document by document, each checked before and after: the
conversion is only defined on valid documents, and what it prints must load again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pdserve.api.convert import convert
from pdserve.api.loader import ManifestError, check, read_documents
from pdserve.api.models import dump


def convert_file(path: str | Path, api_version: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The documents in `api_version`, and one line per field the target version drops."""
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    dropped: list[str] = []
    for doc, where in read_documents(path):
        try:
            result = convert(dump(check(doc, where)), api_version)
            check(result.doc, f"{where} (as {api_version})")
        except ManifestError as err:
            problems += err.problems
            continue
        out.append(result.doc)
        dropped += [
            f"{where}: {p}: dropped, {api_version} has no such field" for p in result.dropped
        ]
    if problems:
        raise ManifestError(problems)
    return out, dropped
