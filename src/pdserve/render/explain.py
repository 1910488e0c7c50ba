"""`pdserve explain`: what a merged service will run, in a few lines a person can check."""

from __future__ import annotations

from typing import Any

import yaml

from pdserve.api.models import dump
from pdserve.api.v1alpha2 import LLMInferenceService
from pdserve.render import epp_config

ACCELERATORS = ("nvidia.com/gpu", "amd.com/gpu", "google.com/tpu", "rdma/roce_gdr", "rdma/ib")


def _pool(title: str, w: dict[str, Any], port: int) -> list[str]:
    replicas = w.get("replicas")
    scaling = w.get("scaling")
    count = (
        f"{replicas} replica(s)"
        if replicas is not None
        else f"autoscaled {scaling.get('minReplicas', 1)}-{scaling.get('maxReplicas', '?')}"
        if scaling
        else "1 replica(s)"
    )
    par = w.get("parallelism") or {}
    shape = ", ".join(f"{k}={v}" for k, v in par.items()) or "none"
    lines = [
        f"{title}: {count}, {'multi-node (LeaderWorkerSet)' if w.get('worker') else 'single-node'}",
        f"  parallelism: {shape}",
        f"  serves on port {port}",
    ]
    for c in (w.get("template") or {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        acc = {k: v for k, v in limits.items() if k in ACCELERATORS}
        lines.append(
            f"  container {c['name']}: {c.get('image', '?')}; accelerators: "
            f"{', '.join(f'{k}={v}' for k, v in acc.items()) or 'none'}; "
            f"cpu={limits.get('cpu', '-')}, memory={limits.get('memory', '-')}"
        )
    return lines


def explain(service: LLMInferenceService) -> str:
    svc = dump(service)
    meta, spec = svc["metadata"], svc["spec"]
    pd = spec.get("prefill") is not None
    lines = [
        f"LLMInferenceService {meta['namespace']}/{meta['name']}",
        f"model: {spec['model'].get('name')} from {spec['model']['uri']}",
        f"mode: {'prefill/decode disaggregated' if pd else 'aggregated'}",
    ]
    lines += _pool("decode pool" if pd else "pool", spec, 8000)
    if pd:
        lines += _pool("prefill pool", spec["prefill"], 8000)
    cfg = yaml.safe_load(epp_config(service)) or {}
    lines.append("routing profiles:")
    for profile in cfg.get("schedulingProfiles") or []:
        refs = ", ".join(
            f"{p['pluginRef']}" + (f" x{p['weight']}" if "weight" in p else "")
            for p in profile.get("plugins") or []
        )
        lines.append(f"  {profile['name']}: {refs}")
    handler = next(
        (p for p in cfg.get("plugins") or [] if "profile-handler" in p.get("type", "")), None
    )
    if handler:
        lines.append(f"  handler: {handler['type']} {handler.get('parameters') or ''}".rstrip())
    lines.append(f"route: /{meta['namespace']}/{meta['name']}/v1/... via the gateway")
    return "\n".join(lines)
