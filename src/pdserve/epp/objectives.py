"""InferenceObjectives: the priority of the objective a request names in its header.

Outside Kubernetes they come from a file of InferenceObjective manifests (`pdserve epp
--inference-objectives`); only those whose poolRef names this EPP's pool apply (all of them
when the EPP has no pool name). A request without an objective, or naming an unknown one,
has priority 0, as upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from pdserve import wire
from pdserve.errors import UserError

GROUPS = ("llm-d.ai", "inference.networking.x-k8s.io")


def parse(text: str, source: str, pool: str = "") -> dict[str, int]:
    """Objective name -> priority; a bad document is one line naming it."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not YAML: {str(err).splitlines()[0]}") from None
    out: dict[str, int] = {}
    for i, doc in enumerate(docs):
        name, priority, ref = _objective(doc, f"{source}: document {i + 1}")
        if not pool or ref == pool:
            out[name] = priority
    return out


def _objective(doc: Any, at: str) -> tuple[str, int, str]:
    if not isinstance(doc, dict) or doc.get("kind") != "InferenceObjective":
        raise UserError(f"{at}: not an InferenceObjective")
    group = str(doc.get("apiVersion", "")).partition("/")[0]
    if group not in GROUPS:
        raise UserError(f"{at}: apiVersion {doc.get('apiVersion')!r} is not of {', '.join(GROUPS)}")
    meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise UserError(f"{at}: metadata.name is missing")
    if not isinstance(spec, dict):
        raise UserError(f"{at} ({name}): spec must be a mapping")
    priority = spec.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise UserError(f"{at} ({name}): spec.priority must be an integer, got {priority!r}")
    ref = spec.get("poolRef") or {}
    pool = ref.get("name", "") if isinstance(ref, dict) else ""
    if not pool:
        raise UserError(f"{at} ({name}): spec.poolRef.name is missing")
    return name, priority, str(pool)


def named(headers: Mapping[str, str]) -> str:
    """The objective the request names (llm-d's header, else the Inference Extension's)."""
    return next((headers[h] for h in wire.OBJECTIVE_HEADERS if headers.get(h)), "")


def fairness_id(headers: Mapping[str, str]) -> str:
    return next((headers[h] for h in wire.FAIRNESS_HEADERS if headers.get(h)), "")
