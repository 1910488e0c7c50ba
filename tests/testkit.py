"""Names shared by test modules (conftest modules cannot import each other by name)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from pdserve.process import ManagedProcess

REPO = Path(__file__).resolve().parents[1]
# Upstream files (samples, CRDs, EPP configs), read where they lie and never copied into the
# repository. Only tests marked `conformance` may read them; tests/conftest.py runs that
# group when the folder is there and says why not when it is missing.
REFERENCE = REPO.parent / "shared" / "reference"
PDSERVE = [sys.executable, "-m", "pdserve"]

Spawn = Callable[..., ManagedProcess]


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` at url/metrics whose labels include `labels`."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total
