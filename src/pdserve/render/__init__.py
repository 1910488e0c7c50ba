"""Rendering: a pure function from a merged LLMInferenceService to Kubernetes objects.

The operator, `pdserve render` and the local runner all call `render` / `epp_config`; none
of them does I/O here.
"""

from __future__ import annotations

from typing import Any

import yaml

from pdserve.api.convert import V1ALPHA2
from pdserve.api.models import dump
from pdserve.api.v1alpha2 import LLMInferenceService
from pdserve.render import epp_defaults, router, scaling, workload


def _as_dict(service: LLMInferenceService | dict[str, Any]) -> dict[str, Any]:
    return dump(service) if isinstance(service, LLMInferenceService) else service


def _ga_pool(service: LLMInferenceService | dict[str, Any]) -> bool:
    """Whether the service's InferencePool is the GA one: a manifest written in v1alpha2
    gets it, as KServe v0.20 renders; one written in v1alpha1 gets v0.16's x-k8s.io pool
    and InferenceModel, which is what a cluster serving that version has installed."""
    if isinstance(service, LLMInferenceService):
        return service.written_as == V1ALPHA2
    return service.get("apiVersion") == V1ALPHA2


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
    ga = _ga_pool(service)
    name = svc["metadata"]["name"]
    ns = namespace or svc["metadata"].get("namespace") or "default"
    spec = svc["spec"]
    objs: list[dict[str, Any]] = [workload.pool(svc, False, ns)]
    if spec.get("prefill") is not None:
        objs.append(workload.pool(svc, True, ns))
    objs += scaling.autoscalers(svc, ns)
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
            router.inference_pool(name, ns, ga),
        ]
        if not ga:  # GA has no InferenceModel; KServe v0.20 renders none
            objs.append(router.inference_model(svc, ns))
        if scheduler.get("tokenizer") is not None:  # KServe main's standalone tokenizer
            objs += [router.tokenizer_deployment(svc, ns), router.tokenizer_service(name, ns)]
    route = router.http_route(svc, ns, ga)
    if route is not None:
        objs.append(route)
    return objs
