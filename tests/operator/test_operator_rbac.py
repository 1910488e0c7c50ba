"""The install's ClusterRole allows what the operator actually does.

Two sources of (API group, resource, verb): the operator's own code, run here against the
install set in a recorded cluster through `Verbs`, which turns every `Objects` call into
the API request it is (server-side apply is a PATCH, and a create too when the object is
new; patch_status a PATCH of /status); and a hand-kept list of what kopf does on our behalf,
each line naming where it comes from."""

from __future__ import annotations

import datetime
from typing import Any

from opstate import NOW, NS, service

from kubefake import RecordedCluster
from pdserve.install import manifests as m
from pdserve.kube import Key
from pdserve.operator import certs, handlers, webhooks
from pdserve.operator.leader import Elector

# The resource of each kind the operator touches; a kind missing here fails the test, so a
# new kind in the code is a new line here and a look at the ClusterRole.
RESOURCES = {
    "ConfigMap": "configmaps",
    "CustomResourceDefinition": "customresourcedefinitions",
    "Deployment": "deployments",
    "Gateway": "gateways",
    "HTTPRoute": "httproutes",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "InferenceModel": "inferencemodels",
    "InferenceObjective": "inferenceobjectives",
    "InferencePool": "inferencepools",
    "LLMInferenceService": "llminferenceservices",
    "LLMInferenceServiceConfig": "llminferenceserviceconfigs",
    "Lease": "leases",
    "LeaderWorkerSet": "leaderworkersets",
    "Pod": "pods",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ScaledObject": "scaledobjects",
    "Secret": "secrets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
}

# What kopf asks of the API server for the handlers in handlers.build_registry (name None:
# not one object's).
KOPF: list[tuple[str, str, str, str]] = [
    # on.resume/create/update + timer "drift" on services: a watch, and its list
    ("serving.kserve.io", "llminferenceservices", "list", "kopf watch (handlers.py svc)"),
    ("serving.kserve.io", "llminferenceservices", "watch", "kopf watch (handlers.py svc)"),
    # AnnotationsProgressStorage/DiffBaseStorage (handlers.py startup): annotations patched
    ("serving.kserve.io", "llminferenceservices", "patch", "kopf progress annotations"),
    # on.event of configs (handlers.py config)
    ("serving.kserve.io", "llminferenceserviceconfigs", "list", "kopf watch (handlers.py config)"),
    ("serving.kserve.io", "llminferenceserviceconfigs", "watch", "kopf watch (handlers.py config)"),
    # on.event of our Deployments (handlers.py deployment)
    ("apps", "deployments", "list", "kopf watch (handlers.py deployment)"),
    ("apps", "deployments", "watch", "kopf watch (handlers.py deployment)"),
    # kopf posts k8s events of handler failures (settings.posting, core v1 Events)
    ("", "events", "create", "kopf posting"),
    # kopf's resource scanning (observation of CRDs) and, namespaced, of namespaces
    ("apiextensions.k8s.io", "customresourcedefinitions", "list", "kopf scanning"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "kopf scanning"),
    ("", "namespaces", "list", "kopf namespace observation (--namespace)"),
    ("", "namespaces", "watch", "kopf namespace observation (--namespace)"),
]
NAMED_VERBS = {"get", "update", "patch", "delete"}  # the verbs resourceNames can restrict


class Verbs:
    """`Objects` over a recorded cluster, noting each call as (group, resource, verb, name)."""

    def __init__(self, inner: RecordedCluster) -> None:
        self.inner = inner
        self.used: set[tuple[str, str, str, str | None]] = set()

    def _note(
        self, api_version: str, kind: str, verb: str, name: str | None, sub: str = ""
    ) -> None:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        self.used.add((group, RESOURCES[kind] + sub, verb, name))

    def get(self, key: Key) -> dict[str, Any] | None:
        self._note(key.api_version, key.kind, "get", key.name)
        return self.inner.get(key)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        self._note(api_version, kind, "list", None)
        return self.inner.list(api_version, kind, namespace, labels)

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        key = Key.of(obj)
        self._note(key.api_version, key.kind, "patch", key.name)
        if key not in self.inner.objects:  # apply that creates: the API server checks create
            self._note(key.api_version, key.kind, "create", None)
        return self.inner.apply(obj, field_manager)

    def delete(self, key: Key) -> None:
        self._note(key.api_version, key.kind, "delete", key.name)
        self.inner.delete(key)

    def patch_status(self, key: Key, status: dict[str, Any]) -> None:
        self._note(key.api_version, key.kind, "patch", key.name, "/status")
        self.inner.patch_status(key, status)


def granted(group: str, resource: str, verb: str, name: str | None) -> bool:
    for rule in m.rules():
        if group not in rule["apiGroups"] or resource not in rule["resources"]:
            continue
        if verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if names is None or (verb in NAMED_VERBS and name in names):
            return True
    return False


def operator_calls() -> set[tuple[str, str, str, str | None]]:
    """Everything the operator's code asks, over the install set plus a service."""
    cluster = RecordedCluster(m.install())
    cluster.put(service())
    verbs = Verbs(cluster)
    # webhooks.serve: the Secret (made, then read), the CA into the three targets
    tls = certs.webhook_tls(verbs, m.NAMESPACE, create=True)
    assert tls is not None
    assert len(webhooks.inject_ca_bundle(verbs, tls.ca)) == 3
    # the Lease: taken, renewed, released (handlers.keep_lease)
    elector = Elector(verbs, "kserve", "pdserve-operator", "me")
    assert elector.try_acquire(NOW)
    assert elector.try_acquire(NOW + datetime.timedelta(seconds=1))
    rt = handlers.Runtime(verbs, elector, clock=lambda: NOW)  # type: ignore[arg-type]
    # reconcile: a pass over every service, one service, a config's change, and a prune
    handlers.reconcile_all(rt)
    assert handlers.reconcile_service(rt, NS, "opt-pd") is not None
    handlers.config_changed(rt, "kserve", "kserve-config-llm-template")
    svc = cluster.objects[Key.of(service())]
    svc["spec"].pop("prefill", None)  # a P/D service made aggregated: prefill children pruned
    handlers.reconcile_service(rt, NS, "opt-pd")
    elector.release(NOW + datetime.timedelta(seconds=2))
    return verbs.used


def test_the_cluster_role_allows_every_call_of_the_operators_code() -> None:
    used = operator_calls()
    verbs = {v for _, _, v, _ in used}
    assert {"get", "list", "patch", "create", "delete"} <= verbs  # the run exercised them
    assert ("", "secrets", "create", None) in used
    assert ("serving.kserve.io", "llminferenceservices/status", "patch", "opt-pd") in used
    denied = sorted((u for u in used if not granted(*u)), key=str)
    assert denied == []


def test_the_cluster_role_allows_what_kopf_does_for_the_handlers() -> None:
    denied = [(g, r, v, why) for g, r, v, why in KOPF if not granted(g, r, v, None)]
    assert denied == []


def test_the_ca_targets_are_granted_by_name_only() -> None:
    """Patching the caBundle is allowed on our CRDs and webhook configuration, no others."""
    for key in (webhooks.WEBHOOK_CONFIG, *webhooks.CRDS):
        resource = RESOURCES[key.kind]
        group = key.api_version.rsplit("/", 1)[0]
        assert granted(group, resource, "patch", key.name)
        assert not granted(group, resource, "patch", "someone-elses")
