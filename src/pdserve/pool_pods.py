"""An InferencePool's pods, followed: list, then watch, and list again after each reconnect.

One follower serves both sides that need the pool: the EPP (its endpoints: ready pods on
the target port) and the sidecar (its prefill allow-list: any pod with an IP). Both used to
ask the API server on their own; the EPP re-listed every 0.25 s (about 8 calls a second per
EPP), where a watch costs one long-lived call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from pdserve.logs import event

log = logging.getLogger("pdserve")


class PodSource(Protocol):
    """The pool's pods as a stream of ("SYNC", {"items": [pod, ...], "ports": [port, ...]})
    (the pool's target ports; first, and again after every reconnect, so deletions missed
    in between are dropped) and then ("ADDED"|"MODIFIED"|"DELETED", pod); pods as the API
    serves them (camelCase JSON)."""

    def events(self) -> Iterable[tuple[str, dict[str, Any]]]: ...


class PoolPods:
    """The pods now, by name, and the target ports; `version` counts changes so a reader
    can skip work when nothing moved. The watch runs on a thread: the kubernetes client
    blocks, and neither the EPP's event loop nor the sidecar's may wait on it."""

    def __init__(self, source: PodSource, retry_seconds: float = 5.0) -> None:
        self.source = source
        self.retry_seconds = retry_seconds
        self.pods: dict[str, dict[str, Any]] = {}
        self.ports: tuple[int, ...] = ()
        self.version = 0
        self.synced = threading.Event()  # the first list has arrived
        self.lock = threading.Lock()

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        with self.lock:
            if kind == "SYNC":
                self.pods = {_name(p): p for p in obj.get("items") or []}
                self.ports = tuple(int(p) for p in obj.get("ports") or [])
            elif kind == "DELETED":
                self.pods.pop(_name(obj), None)
            else:
                self.pods[_name(obj)] = obj
            self.version += 1
        if kind == "SYNC":
            self.synced.set()

    def snapshot(self) -> tuple[int, list[dict[str, Any]], tuple[int, ...]]:
        with self.lock:
            return self.version, list(self.pods.values()), self.ports

    def run(self) -> None:
        """Follows the source until it ends (never, in a cluster); API errors are logged and
        retried, the pods keep their last known state meanwhile."""
        while True:
            try:
                for kind, obj in self.source.events():
                    self.apply(kind, obj)
                return
            except Exception as err:  # the API server, the network, RBAC: all worth a retry
                event(
                    log,
                    "pool_watch_failed",
                    logging.WARNING,
                    error=f"{type(err).__name__}: {err}",
                    pods=len(self.pods),
                    retry_s=self.retry_seconds,
                )
                time.sleep(self.retry_seconds)

    def start(self) -> None:
        threading.Thread(target=self.run, name="inferencepool-watch", daemon=True).start()


def _name(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def pod_ip(pod: dict[str, Any]) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip else None


class KubernetesPods:
    """PodSource over the Kubernetes API: the pool's selector is read again on each
    reconnect, so a changed InferencePool is followed too."""

    def __init__(self, namespace: str, pool: str) -> None:
        from pdserve import kube

        self.namespace, self.pool = namespace, pool
        self.cluster = kube.Cluster()

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            spec = self.cluster.inference_pool(self.namespace, self.pool)
            pods, version = self.cluster.list_pods(self.namespace, spec.selector)
            yield "SYNC", {"items": pods, "ports": [spec.target_port]}
            yield from self.cluster.watch_pods(self.namespace, spec.selector, version)
