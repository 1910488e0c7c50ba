"""A service's desired children: its configs from the cluster, resolve, render, then our stamp.

The stamp (an ownerReference and two labels) is what lets the rest of the operator leave
deletion to the garbage collector and find, by label, the children it must prune.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pdserve.api.loader import parse
from pdserve.api.merge import merge
from pdserve.api.models import CONFIG_KIND, SERVICE_KIND
from pdserve.api.resolve import presets, resolve, well_known
from pdserve.api.template import child_name
from pdserve.api.v1alpha2 import API_VERSION, LLMInferenceService, LLMInferenceServiceConfig, Spec
from pdserve.kube import Key, Objects
from pdserve.render import names, render

FIELD_MANAGER = "pdserve-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "pdserve-operator"
SERVICE_LABEL = "serving.kserve.io/llminferenceservice"

# Every kind render can emit (and the autoscalers rendered beside the workloads), the one
# list pruning walks: a kind missing here would leave stale children behind.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("v1", "Service"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferencePool"),
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModel"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
)

Certs = tuple[str, str]


@dataclass
class Desired:
    """What one service should have on the cluster, and the configs that made it."""

    service: LLMInferenceService
    children: list[dict[str, Any]]
    applied_configs: list[dict[str, str]] = field(default_factory=list)


def where(service: dict[str, Any]) -> str:
    meta = service["metadata"]
    return f"{SERVICE_KIND} {meta.get('namespace', 'default')}/{meta['name']}"


def managed_labels(name: str) -> dict[str, str]:
    """A label value holds 63 characters; a longer service name is hashed as child names
    are (the ownerReference still names the service in full)."""
    return {MANAGED_BY_LABEL: MANAGED_BY, SERVICE_LABEL: child_name(name, "")}


def owner_reference(service: dict[str, Any]) -> dict[str, Any]:
    meta = service["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": SERVICE_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def cluster_configs(
    objects: Objects, namespace: str, system_namespace: str
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Configs by name with the namespace each came from: the service's namespace wins over
    the system namespace, as KServe looks them up (the built-in presets come last, in
    resolve)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for ns in dict.fromkeys((system_namespace, namespace)):
        for doc in objects.list(API_VERSION, CONFIG_KIND, ns):
            out[doc["metadata"]["name"]] = (ns, doc)
    return out


def _parsed_configs(
    configs: dict[str, tuple[str, dict[str, Any]]], wanted: set[str]
) -> list[LLMInferenceServiceConfig]:
    """Only the configs the service may merge are parsed, so a broken config elsewhere in
    the namespace does not stop this service; a broken one it merges names itself."""
    out = []
    for name in sorted(wanted & configs.keys()):
        ns, doc = configs[name]
        parsed = parse(without_server_fields(doc), f"{CONFIG_KIND} {ns}/{name}")
        assert isinstance(parsed, LLMInferenceServiceConfig)
        out.append(parsed)
    return out


def without_server_fields(doc: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in doc.get("metadata", {}).items() if k != "managedFields"}
    return {**{k: v for k, v in doc.items() if k != "status"}, "metadata": meta}


def enabled_presets(service: LLMInferenceService, refs: list[dict[str, Any]]) -> list[str]:
    """The well-known presets the service turns on, judged with its baseRefs merged in,
    as resolve judges it; [] when that merge does not validate (resolve then reports it)."""
    spec = service.model_dump(by_alias=True, exclude_none=True, mode="json")["spec"]
    for doc in refs:
        spec = merge(spec, doc.get("spec") or {})
    try:
        return well_known(Spec.model_validate(spec))
    except ValueError:
        return []


def applied_configs(
    service: LLMInferenceService,
    configs: dict[str, tuple[str, dict[str, Any]]],
    system_namespace: str,
) -> list[dict[str, str]]:
    """status.appliedConfigs as v0.20 reports them: presets (a cluster copy overrides the
    built-in one, which lives in the system namespace) then the user's baseRefs."""
    ref_names = [r.name for r in service.spec.base_refs or []]
    refs = [configs[n][1] if n in configs else presets().get(n, {}) for n in ref_names]
    out = []
    for name in enabled_presets(service, refs):
        out.append(
            {
                "name": name,
                "namespace": configs.get(name, (system_namespace,))[0],
                "source": "Preset",
            }
        )
    ns = service.metadata.namespace or "default"
    for name in ref_names:
        out.append({"name": name, "namespace": configs.get(name, (ns,))[0], "source": "UserRef"})
    return out


def existing_certs(objects: Objects, service_name: str, namespace: str) -> Certs | None:
    """The pair already in the service's TLS Secret: certificates are made once, never on
    every reconcile (that would restart every pod that mounts them)."""
    secret = objects.get(Key("v1", "Secret", namespace, names.tls_secret(service_name)))
    data = (secret or {}).get("data") or {}
    crt, key = data.get("tls.crt"), data.get("tls.key")
    if not crt or not key:
        return None
    return base64.b64decode(crt).decode(), base64.b64decode(key).decode()


def stamp(child: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    meta = child["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **managed_labels(service["metadata"]["name"])}
    meta["ownerReferences"] = [owner_reference(service)]
    return child


def desired(
    objects: Objects,
    service: dict[str, Any],
    system_namespace: str,
    make_certs: Callable[[], Certs],
) -> Desired:
    """Raises ManifestError when the service or a config it merges is invalid."""
    ns = service["metadata"].get("namespace") or "default"
    parsed = parse(without_server_fields(service), where(service))
    assert isinstance(parsed, LLMInferenceService)
    configs = cluster_configs(objects, ns, system_namespace)
    wanted = {r.name for r in parsed.spec.base_refs or []} | set(presets())
    resolved = resolve(parsed, _parsed_configs(configs, wanted), ns, where(service))
    certs = existing_certs(objects, parsed.name, ns) or make_certs()
    children = [stamp(c, service) for c in render(resolved, ns, certs)]
    return Desired(resolved, children, applied_configs(parsed, configs, system_namespace))
