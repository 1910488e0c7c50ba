"""From a manifest file to a Plan, through the API's load/resolve and the EPP config render."""

from __future__ import annotations

from pathlib import Path

from pdserve.errors import UserError
from pdserve.runner.plan import Plan, make_plan


def load_plan(path: Path, namespace: str | None = None) -> Plan:
    """Parse, validate and merge the manifest (UserError with the validate message if bad)."""
    from pdserve import api, render
    from pdserve.api.models import SERVICE_KIND

    docs = api.load(str(path))
    services = [d for d in docs if isinstance(d, api.LLMInferenceService)]
    configs = [d for d in docs if not isinstance(d, api.LLMInferenceService)]
    if len(services) != 1:
        raise UserError(f"{path}: expected one {SERVICE_KIND}, found {len(services)}")
    merged = api.resolve(services[0], configs, namespace=namespace)
    merged_dict = api.dump(merged)
    ns = namespace or (merged_dict.get("metadata") or {}).get("namespace") or "default"
    return make_plan(merged_dict, ns, render.epp_config(merged))
