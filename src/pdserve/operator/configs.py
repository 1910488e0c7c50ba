"""Which services a changed LLMInferenceServiceConfig affects, so only those re-reconcile.

A service merges a config it names in spec.baseRefs, and one named like a built-in preset
it enables (a cluster copy overrides the built-in one). Configs' own baseRefs are not
followed, because resolve does not merge them either. A config in the system namespace
serves every namespace; one elsewhere serves only its own.
"""

from __future__ import annotations

from typing import Any

from pdserve.api.loader import ManifestError, parse
from pdserve.api.resolve import presets
from pdserve.api.v1alpha2 import LLMInferenceService
from pdserve.operator import children as ch


def _uses_preset(service: dict[str, Any], name: str, configs: dict[str, Any]) -> bool:
    """Whether the service enables the preset `name`; True when that cannot be told (a
    service that does not parse is better reconciled once more, to report why)."""
    try:
        parsed = parse(ch.without_server_fields(service), ch.where(service))
    except ManifestError:
        return True
    assert isinstance(parsed, LLMInferenceService)
    refs = [configs.get(r.name) or presets().get(r.name) or {} for r in parsed.spec.base_refs or []]
    return name in ch.enabled_presets(parsed, refs)


def services_referencing(
    config_name: str,
    services: list[dict[str, Any]],
    configs: list[dict[str, Any]],
    config_namespace: str | None = None,
    system_namespace: str = "pdserve-system",
) -> list[dict[str, Any]]:
    """The services (as the API serves them) whose merged spec may change with the config
    `config_name`; `configs` are the cluster's, for presets a baseRef turns on."""
    by_name = {c["metadata"]["name"]: c for c in configs}
    out = []
    for svc in services:
        ns = svc["metadata"].get("namespace")
        if config_namespace not in (None, system_namespace, ns):
            continue
        refs = {r.get("name") for r in (svc.get("spec") or {}).get("baseRefs") or []}
        if config_name in refs or (
            config_name in presets() and _uses_preset(svc, config_name, by_name)
        ):
            out.append(svc)
    return out
