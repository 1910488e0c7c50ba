"""Which prefill hosts the sidecar may call (SSRF protection).

In Kubernetes the allowed hosts are the pods selected by the InferencePool, followed with a
watch; outside it, a static list. Both sit behind one small interface so the proxy does not
care which it has, and tests can check the pool logic without an API server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from pdserve.logs import event

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
    """The pool's pods as a stream of ("SYNC", {"items": [pod, ...]}) (first, and again after
    every reconnect, so deletions missed in between are dropped) and then
    ("ADDED"|"MODIFIED"|"DELETED", pod); pods as the API serves them (camelCase JSON)."""

    def events(self) -> Iterable[tuple[str, dict[str, Any]]]: ...


class PoolAllowList:
    """The IPs of the InferencePool's pods, kept current by a background watch.

    A pod with an IP is allowed whether or not it is Ready: the EPP only picks ready pods,
    and a pod that just turned unready may still be finishing a prefill it was sent.
    """

    def __init__(self, source: PodSource, retry_seconds: float = 5.0) -> None:
        self.source = source
        self.retry_seconds = retry_seconds
        self.ips: dict[str, str] = {}  # pod name -> IP
        self.lock = threading.Lock()

    def allows(self, host: str) -> bool:
        with self.lock:
            return host in self.ips.values()

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "SYNC":
            ips = dict(filter(None, map(_name_ip, obj.get("items") or [])))
            with self.lock:
                self.ips = ips
            return
        name_ip = _name_ip(obj)
        name = (obj.get("metadata") or {}).get("name", "")
        with self.lock:
            if kind == "DELETED" or name_ip is None:
                self.ips.pop(name, None)
            else:
                self.ips[name] = name_ip[1]

    def run(self) -> None:
        """Follows the source until it ends (never, in a cluster); API errors are logged and
        retried, the list keeps its last known contents meanwhile."""
        while True:
            try:
                for kind, obj in self.source.events():
                    self.apply(kind, obj)
                return
            except Exception as err:  # the API server, the network, RBAC: all worth a retry
                event(
                    log,
                    "allowlist_watch_failed",
                    logging.WARNING,
                    error=f"{type(err).__name__}: {err}",
                    allowed=len(self.ips),
                    retry_s=self.retry_seconds,
                )
                time.sleep(self.retry_seconds)

    def start(self) -> None:
        threading.Thread(target=self.run, name="inferencepool-watch", daemon=True).start()


def _name_ip(pod: dict[str, Any]) -> tuple[str, str] | None:
    name = (pod.get("metadata") or {}).get("name", "")
    ip = (pod.get("status") or {}).get("podIP")
    return (name, ip) if ip else None


class KubernetesPods:
    """PodSource over the Kubernetes API: the pool's selector is read again on each
    reconnect, so a changed InferencePool is followed too."""

    def __init__(self, namespace: str, pool: str) -> None:
        from pdserve import kube

        self.namespace, self.pool = namespace, pool
        self.cluster = kube.Cluster()

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            labels = self.cluster.inference_pool(self.namespace, self.pool).selector
            pods, version = self.cluster.list_pods(self.namespace, labels)
            yield "SYNC", {"items": pods}
            yield from self.cluster.watch_pods(self.namespace, labels, version)
