"""The endpoints file: what the runner writes is what the EPP reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve import endpoints, wire
from pdserve.epp.datastore import FileSource

ENTRIES = [
    endpoints.Entry(address="127.0.0.1", port=7001, labels={wire.ROLE_LABEL: "prefill"}),
    endpoints.Entry(address="127.0.0.1", port=7002),
]


def test_written_entries_read_back_and_no_temporary_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    endpoints.write(path, ENTRIES)
    assert endpoints.read(path) == ENTRIES
    assert [p.name for p in tmp_path.iterdir()] == ["endpoints.json"]


def test_a_file_off_the_schema_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text('[{"address": "127.0.0.1"}]')
    with pytest.raises(ValueError, match="port"):
        endpoints.read(path)
    path.write_text("[{")
    with pytest.raises(ValueError):
        endpoints.read(path)


def test_the_epp_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    source = FileSource(str(path))
    assert source.current() is None  # not written yet
    endpoints.write(path, ENTRIES)
    got = source.current()
    assert got is not None
    assert [(e.name, e.role) for e in got] == [
        ("127.0.0.1:7001", "prefill"),
        ("127.0.0.1:7002", None),
    ]
    assert source.current() is None  # unchanged
    path.write_text("not json")
    assert source.current() is None  # unreadable: the last list stays
