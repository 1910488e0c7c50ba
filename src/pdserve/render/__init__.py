"""Rendering: a pure function from a merged LLMInferenceService to Kubernetes objects.

The operator, `pdserve render` and the local runner all call `render` / `epp_config`; none
of them does I/O here.
"""

from __future__ import annotations

from typing import Any

import yaml

from pdserve.api.models import LLMInferenceService, dump
from pdserve.render import epp_defaults, router, workload


def _as_dict(service: LLMInferenceService | dict[str, Any]) -> dict[str, Any]:
    return dump(service) if isinstance(service, LLMInferenceService) else service


def epp_config(service: LLMInferenceService | dict[str, Any]) -> str:
    """The EndpointPickerConfig the EPP runs: the service's own, else the P/D or single default."""
    svc = _as_dict(service)
    scheduler = (svc["spec"].get("router") or {}).get("scheduler") or {}
    inline = (scheduler.get("config") or {}).get("inline")
    if isinstance(inline, dict):
        return yaml.safe_dump(inline, sort_keys=False)
    if inline:
        return inline
    for c in (scheduler.get("template") or {}).get("containers") or []:
        args = c.get("args") or []
        if c.get("name") == "main" and "--config-text" in args[:-1]:
            return args[args.index("--config-text") + 1]
    return epp_defaults.PD if svc["spec"].get("prefill") is not None else epp_defaults.SINGLE


def render(
    service: LLMInferenceService | dict[str, Any],
    namespace: str | None = None,
    certs: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    svc = _as_dict(service)
    name = svc["metadata"]["name"]
    ns = namespace or svc["metadata"].get("namespace") or "default"
    spec = svc["spec"]
    objs: list[dict[str, Any]] = [workload.pool(svc, False, ns)]
    if spec.get("prefill") is not None:
        objs.append(workload.pool(svc, True, ns))
    objs += [
        workload.workload_service(name, ns),
        workload.tls_secret(name, ns, certs),
        *workload.workload_rbac(name, ns),
    ]
    rt = spec.get("router") or {}
    scheduler = rt.get("scheduler")
    if scheduler is not None and not (scheduler.get("pool") or {}).get("ref"):
        objs += [
            router.epp_deployment(svc, ns, epp_config(svc)),
            router.epp_service(name, ns),
            *router.epp_rbac(name, ns),
            router.inference_pool(name, ns),
            router.inference_model(svc, ns),
        ]
    route = router.http_route(svc, ns)
    if route is not None:
        objs.append(route)
    return objs
