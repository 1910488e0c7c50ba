"""The router: the endpoint picker (Deployment, Service, RBAC), the InferencePool and
InferenceModel, and the HTTPRoute from the gateway to the pool."""

from __future__ import annotations

import copy
from typing import Any

from pdserve import wire
from pdserve.api.convert import MODEL_CRITICALITY, pool_spec_to_ga
from pdserve.render import names
from pdserve.render.workload import meta, model_storage, rbac

TOKENIZER_PORT = 8000
TOKENIZER_PORT_NAME = "render-http"


def epp_deployment(service: dict[str, Any], namespace: str, config: str) -> dict[str, Any]:
    name = service["metadata"]["name"]
    scheduler = service["spec"]["router"]["scheduler"]
    labels = names.scheduler_labels(name)
    pod = copy.deepcopy(scheduler.get("template") or {})
    for c in pod.get("containers", []):
        if c.get("name") == "main":
            args = c.setdefault("args", [])
            if "--config-text" not in args and "--config-file" not in args:
                args += ["--config-text", config]
    pod.setdefault("serviceAccountName", names.epp_sa(name))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(names.scheduler(name), namespace, labels),
        "spec": {
            "replicas": scheduler.get("replicas") or 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**(scheduler.get("labels") or {}), **labels},
                    **(
                        {"annotations": scheduler["annotations"]}
                        if scheduler.get("annotations")
                        else {}
                    ),
                },
                "spec": pod,
            },
        },
    }


def epp_service(name: str, namespace: str) -> dict[str, Any]:
    ports = [
        ("grpc-ext-proc", wire.EPP_GRPC_PORT),
        ("grpc-health", wire.EPP_HEALTH_PORT),
        ("metrics", wire.EPP_METRICS_PORT),
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(names.epp_service(name), namespace, names.scheduler_labels(name)),
        "spec": {
            "selector": names.scheduler_labels(name),
            "ports": [
                {
                    "name": n,
                    "port": p,
                    "targetPort": p,
                    "protocol": "TCP",
                    **({"appProtocol": "http2"} if n == "grpc-ext-proc" else {}),
                }
                for n, p in ports
            ],
        },
    }


def tokenizer_deployment(service: dict[str, Any], namespace: str) -> dict[str, Any]:
    """KServe main's standalone tokenizer: one replica of `router.scheduler.tokenizer`'s
    template (the tokenizer preset's vLLM render server, with the service's overrides),
    the model mounted in `main` as in the workload pods."""
    name = service["metadata"]["name"]
    labels = names.tokenizer_labels(name)
    tokenizer = service["spec"]["router"]["scheduler"].get("tokenizer") or {}
    pod = copy.deepcopy(tokenizer.get("template") or {})
    model_storage(pod, service["spec"]["model"]["uri"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(names.tokenizer(name), namespace, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def tokenizer_service(name: str, namespace: str) -> dict[str, Any]:
    labels = names.tokenizer_labels(name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(names.tokenizer(name), namespace, labels),
        "spec": {
            "selector": labels,
            "ports": [
                {
                    "name": TOKENIZER_PORT_NAME,
                    "port": TOKENIZER_PORT,
                    "targetPort": TOKENIZER_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def epp_rbac(name: str, namespace: str) -> list[dict[str, Any]]:
    read = ["get", "list", "watch"]
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": read},
        {
            "apiGroups": [wire.POOL_GROUP, wire.POOL_GROUP_GA],
            "resources": ["inferencepools", "inferencemodels", "inferenceobjectives"],
            "verbs": read,
        },
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
    ]
    return rbac(
        name, namespace, rules, names.epp_sa(name), names.epp_role(name), names.epp_rb(name)
    )


def inference_pool(name: str, namespace: str, ga: bool = False) -> dict[str, Any]:
    """The service's InferencePool: KServe v0.16's x-k8s.io v1alpha2 one, or with `ga` the
    GA inference.networking.k8s.io/v1 one KServe v0.20 renders (same name and meaning). The
    GA spec is the v1alpha2 one through the API's own conversion, so the two cannot drift."""
    spec: dict[str, Any] = {
        "selector": names.pool_selector(name),
        "targetPortNumber": wire.SIDECAR_PORT,
        "extensionRef": {
            "name": names.epp_service(name),
            "kind": "Service",
            "portNumber": wire.EPP_GRPC_PORT,
            "failureMode": "FailOpen",
        },
    }
    if ga:
        spec = pool_spec_to_ga(spec)
    group, version = _pool_api(ga)
    return {
        "apiVersion": f"{group}/{version}",
        "kind": "InferencePool",
        "metadata": meta(names.inference_pool(name), namespace, names.owner(name)),
        "spec": spec,
    }


def _pool_api(ga: bool) -> tuple[str, str]:
    return (
        (wire.POOL_GROUP_GA, wire.POOL_VERSION_GA) if ga else (wire.POOL_GROUP, wire.POOL_VERSION)
    )


def inference_model(service: dict[str, Any], namespace: str) -> dict[str, Any]:
    name, model = service["metadata"]["name"], service["spec"]["model"]
    annotations = service["metadata"].get("annotations") or {}
    return {
        "apiVersion": f"{wire.POOL_GROUP}/{wire.POOL_VERSION}",
        "kind": "InferenceModel",
        "metadata": meta(names.inference_model(name), namespace, names.owner(name)),
        "spec": {
            "modelName": model.get("name") or name,
            # v1alpha1's model.criticality, kept by the conversion to v1alpha2
            "criticality": annotations.get(MODEL_CRITICALITY) or "Critical",
            "poolRef": {
                "group": wire.POOL_GROUP,
                "kind": "InferencePool",
                "name": names.inference_pool(name),
            },
        },
    }


def _backend_group(spec: dict[str, Any], pool: str, ga: bool) -> None:
    """Point the route's references to the service's own pool at the API group it is
    rendered in: presets and configs written for one version serve both."""
    group = _pool_api(ga)[0]
    for rule in spec.get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            ours = ref.get("kind") == "InferencePool" and ref.get("name") == pool
            if ours and ref.get("group") in (wire.POOL_GROUP, wire.POOL_GROUP_GA):
                ref["group"] = group


def http_route(service: dict[str, Any], namespace: str, ga: bool = False) -> dict[str, Any] | None:
    name = service["metadata"]["name"]
    route = (service["spec"].get("router") or {}).get("route") or {}
    spec = (route.get("http") or {}).get("spec")
    if spec is None:
        return None
    spec = copy.deepcopy(spec)
    _backend_group(spec, names.inference_pool(name), ga)
    refs = ((service["spec"].get("router") or {}).get("gateway") or {}).get("refs")
    if refs:  # the user's gateways replace the default parent
        spec["parentRefs"] = [
            {
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": r["name"],
                "namespace": r.get("namespace", namespace),
                **({"sectionName": r["sectionName"]} if r.get("sectionName") else {}),
            }
            for r in refs
        ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta(names.http_route(name), namespace, names.owner(name)),
        "spec": spec,
    }
