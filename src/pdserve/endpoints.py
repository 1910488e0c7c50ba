"""The endpoints file: the engines the local runner lets the EPP route to.

The runner rewrites it as engines become healthy or are scaled away (`pdserve up`); the
EPP (`--endpoints-file`) re-reads it whenever it changes. Both sides use this module, so
the file has one schema: a JSON list of {address, port, labels}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter


class Entry(BaseModel):
    """One endpoint; `labels` carry the pod labels a cluster would (the role among them)."""

    model_config = ConfigDict(frozen=True)

    address: str
    port: int
    labels: dict[str, str] = {}


_LIST = TypeAdapter(list[Entry])


def write(path: Path, endpoints: Iterable[Entry]) -> None:
    """Replace the file atomically: the EPP may read it at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([e.model_dump() for e in endpoints], indent=1))
    tmp.replace(path)


def read(path: Path) -> list[Entry]:
    """Raises OSError when the file cannot be read, ValueError when it is not the schema."""
    return _LIST.validate_json(path.read_bytes())
