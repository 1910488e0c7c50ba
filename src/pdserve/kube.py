"""The little of the Kubernetes API that the EPP and the sidecar read.

Both follow an InferencePool: its selector and target port, and the pods it selects. This
module is the one place that talks to an API server, so that everything above it takes
plain dicts and can be tested here, where no API server runs. Pods come back as the JSON
the API serves (camelCase), not the client library's snake_case models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
