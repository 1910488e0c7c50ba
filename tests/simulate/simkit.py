"""Manifests and workloads for simulator tests (a module: conftest modules cannot be imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from testkit import REPO

EXAMPLE = REPO / "examples" / "pd-smollm2.yaml"


def fleet(folder: Path, prefill: int | None, decode: int, args: list[str] | None = None) -> Path:
    """The P/D example with other replica counts; `prefill` None makes it aggregated.
    `args`: the engines' main-container args (replacing the presets', as in KServe)."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["replicas"] = decode
    if prefill is None:
        del doc["spec"]["prefill"]
    else:
        doc["spec"]["prefill"]["replicas"] = prefill
    if args is not None:
        pools = [doc["spec"]] + ([doc["spec"]["prefill"]] if prefill is not None else [])
        for pool in pools:
            pool["template"]["containers"][0]["args"] = args
    path = folder / f"fleet-{prefill}-{decode}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def workload(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


LONG_PROMPTS = {
    "api": "chat",
    "arrival": {"process": "poisson", "rate": 2},
    "input_tokens": {"dist": "uniform", "min": 3000, "max": 6000},
    "output_tokens": {"dist": "uniform", "min": 16, "max": 64},
}
