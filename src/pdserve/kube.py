"""The one place that talks to a Kubernetes API server, so that everything above it takes
plain dicts and can be tested here, where no API server runs. Objects come back as the JSON
the API serves (camelCase), not the client library's snake_case models.

Two views: `Cluster`, the little the EPP and the sidecar read (an InferencePool's selector
and target port, and the pods it selects), and `Objects`, whole objects by apiVersion, kind,
namespace and name, for the operator, its webhooks and preflight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pdserve import wire

API_TIMEOUT = 10.0  # seconds; a hung API server must not hold a poller's thread forever


@dataclass(frozen=True)
class PoolSpec:
    selector: dict[str, str]
    target_port: int


def pool_spec(obj: dict[str, Any]) -> PoolSpec:
    """Reads both shapes: v1alpha2 (a flat label map, targetPortNumber) and GA v1
    (matchLabels, targetPorts[].number)."""
    spec = obj.get("spec") or {}
    selector = spec.get("selector") or {}
    labels = selector.get("matchLabels", selector)
    if "targetPortNumber" in spec:
        port = spec["targetPortNumber"]
    else:
        port = (spec.get("targetPorts") or [{}])[0].get("number", wire.SIDECAR_PORT)
    return PoolSpec({str(k): str(v) for k, v in labels.items()}, int(port))


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class Cluster:
    """In-cluster access with the pod's service account; configuration is loaded once."""

    def __init__(self) -> None:
        from kubernetes import client, config

        config.load_incluster_config()
        self._api = client.ApiClient()
        self.core = client.CoreV1Api(self._api)
        self.custom = client.CustomObjectsApi(self._api)

    def inference_pool(self, namespace: str, name: str) -> PoolSpec:
        """The version we render first; the GA one when that is not there (404)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return pool_spec(self._pool(wire.POOL_GROUP, wire.POOL_VERSION, namespace, name))
        except ApiException as err:
            if err.status != 404:
                raise
        return pool_spec(self._pool(wire.POOL_GROUP_GA, wire.POOL_VERSION_GA, namespace, name))

    def _pool(self, group: str, version: str, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            group, version, namespace, "inferencepools", name, _request_timeout=API_TIMEOUT
        )
        return obj

    def list_pods(self, namespace: str, labels: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
        """The pods now and the resourceVersion to watch from."""
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=label_selector(labels), _request_timeout=API_TIMEOUT
        )
        return [self._json(p) for p in pods.items], pods.metadata.resource_version

    def watch_pods(
        self, namespace: str, labels: dict[str, str], resource_version: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """ADDED / MODIFIED / DELETED events until the server ends the watch."""
        from kubernetes import watch

        stream = watch.Watch().stream(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=label_selector(labels),
            resource_version=resource_version,
            timeout_seconds=300,
        )
        for ev in stream:
            yield ev["type"], self._json(ev["object"])

    def _json(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = self._api.sanitize_for_serialization(obj)
        return out


# The operator's and preflight's view of a cluster: whole objects as the API serves them
# (camelCase JSON), addressed by apiVersion, kind, namespace and name. `Objects` is the one
# interface everything above talks to; `ApiObjects` is the real client behind it, and the
# tests put a recorded cluster (tests/kubefake.py) in its place.


@dataclass(frozen=True)
class Key:
    api_version: str
    kind: str
    namespace: str | None
    name: str

    @staticmethod
    def of(obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return Key(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


class Objects(Protocol):
    def get(self, key: Key) -> dict[str, Any] | None:
        """The object, or None when the server has none (404, or its kind is not installed)."""

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every object of the kind (in the namespace; cluster-wide for None); [] when the
        kind is not installed."""

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply with force: the fields `obj` sets become the manager's."""

    def delete(self, key: Key) -> None:
        """Deletes with background propagation; a missing object is not an error."""

    def patch_status(self, key: Key, status: dict[str, Any]) -> None:
        """Replaces the status subresource's content (merge patch)."""


class ApiObjects:
    """`Objects` over a real API server, through the client library's dynamic client, with
    configuration from the pod's service account or else the current kubeconfig."""

    def __init__(self) -> None:
        from kubernetes import client, config, dynamic

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self._dyn = dynamic.DynamicClient(client.ApiClient())

    def _resource(self, api_version: str, kind: str) -> Any | None:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self._dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            return None

    def get(self, key: Key) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        res = self._resource(key.api_version, key.kind)
        if res is None:
            return None
        try:
            out = res.get(name=key.name, namespace=key.namespace, _request_timeout=API_TIMEOUT)
        except NotFoundError:
            return None
        return dict(out.to_dict())

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        res = self._resource(api_version, kind)
        if res is None:
            return []
        out = res.get(
            namespace=namespace,
            label_selector=label_selector(labels or {}) or None,
            _request_timeout=API_TIMEOUT,
        )
        return [dict(item) for item in out.to_dict().get("items") or []]

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        res = self._resource(obj["apiVersion"], obj["kind"])
        if res is None:
            raise LookupError(f"{Key.of(obj)}: the cluster has no {obj['kind']} kind installed")
        out = res.server_side_apply(
            body=obj,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=field_manager,
            force_conflicts=True,
            _request_timeout=API_TIMEOUT,
        )
        return dict(out.to_dict())

    def delete(self, key: Key) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        res = self._resource(key.api_version, key.kind)
        if res is None:
            return
        try:
            res.delete(
                name=key.name,
                namespace=key.namespace,
                propagation_policy="Background",
                _request_timeout=API_TIMEOUT,
            )
        except NotFoundError:
            return

    def patch_status(self, key: Key, status: dict[str, Any]) -> None:
        res = self._resource(key.api_version, key.kind)
        if res is None:
            raise LookupError(f"{key}: the cluster has no {key.kind} kind installed")
        res.status.patch(
            body={"status": status},
            name=key.name,
            namespace=key.namespace,
            content_type="application/merge-patch+json",
            _request_timeout=API_TIMEOUT,
        )
