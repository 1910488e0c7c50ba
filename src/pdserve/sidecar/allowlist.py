"""Which prefill hosts the sidecar may call (SSRF protection).

In Kubernetes the allowed hosts are the pods selected by the InferencePool, followed with a
watch; outside it, a static list. Both sit behind one small interface so the proxy does not
care which it has, and tests can check the pool logic without an API server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Protocol

log = logging.getLogger("pdserve.sidecar")


class AllowList(Protocol):
    def allows(self, host: str) -> bool: ...


class AllowAll:
    def allows(self, host: str) -> bool:
        return True


class StaticAllowList:
    def __init__(self, hosts: Iterable[str]) -> None:
        self.hosts = {h.strip() for h in hosts if h.strip()}

    def allows(self, host: str) -> bool:
        return host in self.hosts


class PodSource(Protocol):
    """Pod events for an InferencePool's selector: ("ADDED"|"MODIFIED"|"DELETED", pod)."""

    def selector(self) -> dict[str, str]: ...
    def events(self, selector: dict[str, str]) -> Iterable[tuple[str, dict[str, Any]]]: ...


class PoolAllowList:
    """The IPs of the InferencePool's ready pods, kept current by a background watch."""

    def __init__(self, source: PodSource) -> None:
        self.source = source
        self.ips: dict[str, str] = {}  # pod name -> IP
        self.lock = threading.Lock()

    def allows(self, host: str) -> bool:
        with self.lock:
            return host in self.ips.values()

    def apply(self, kind: str, pod: dict[str, Any]) -> None:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        name, ip = meta.get("name", ""), status.get("podIP")
        with self.lock:
            if kind == "DELETED" or not ip:
                self.ips.pop(name, None)
            else:
                self.ips[name] = ip

    def run(self) -> None:
        for kind, pod in self.source.events(self.source.selector()):
            self.apply(kind, pod)

    def start(self) -> None:
        threading.Thread(target=self.run, name="inferencepool-watch", daemon=True).start()


class KubernetesPods:
    """PodSource over the Kubernetes API (in-cluster config), for InferencePool v1."""

    def __init__(self, namespace: str, pool: str) -> None:
        from kubernetes import client, config

        config.load_incluster_config()
        self.namespace, self.pool = namespace, pool
        self.core = client.CoreV1Api()
        self.custom = client.CustomObjectsApi()

    def selector(self) -> dict[str, str]:
        obj = self.custom.get_namespaced_custom_object(
            "inference.networking.k8s.io", "v1", self.namespace, "inferencepools", self.pool
        )
        sel = obj["spec"]["selector"]
        return dict(sel.get("matchLabels", sel))

    def events(self, selector: dict[str, str]) -> Iterable[tuple[str, dict[str, Any]]]:
        from kubernetes import watch

        labels = ",".join(f"{k}={v}" for k, v in selector.items())
        while True:
            stream = watch.Watch().stream(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=labels,
                timeout_seconds=300,
            )
            for ev in stream:
                yield ev["type"], ev["object"].to_dict()
