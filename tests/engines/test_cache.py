"""Compile caches live in pdserve's cache folder, not in the run's TMPDIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdserve.engines import cache


def test_vllm_compile_caches_live_in_pdserve_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not TMPDIR: the runner removes its TMPDIR on down, and a cold inductor cache lands there."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("VLLM_CACHE_ROOT", "/mine")
    env = cache.compile_cache_env()
    assert env == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "pdserve" / "compile" / "torchinductor"),
        "VLLM_CACHE_ROOT": "/mine",  # the user's choice wins
    }
