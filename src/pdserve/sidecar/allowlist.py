"""Which prefill targets (host and port) the sidecar may call (SSRF protection).

In Kubernetes the allowed targets are the InferencePool's pods on its target port, followed
with a watch; on one machine, the prefill endpoints of the runner's endpoints file; else a
static list. A host alone is never enough: a sidecar that reaches every port of an allowed
host can be aimed at anything listening there (upstream's host-only list, llm-d-router
issue 979). All sit behind one small interface so the proxy does not care which it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pdserve import endpoints
from pdserve.logs import event
from pdserve.wire import ROLE_LABEL, ROLE_PREFILL

log = logging.getLogger("pdserve.sidecar")


class AllowList(Protocol):
    def allows(self, target: str) -> bool:
        """`target`: "host:port" ("[v6]:port"), as the proxy read it from the EPP's header."""
        ...


def parse_target(target: str) -> tuple[str, int]:
    """(host, port); ValueError for anything but host:port, a bare host included."""
    parts = urlsplit("//" + target.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    extra = parts.username is not None or parts.path or parts.query or parts.fragment
    if port is None or not parts.hostname or extra:
        raise ValueError(f"expected host:port, got {target!r}")
    return parts.hostname, port


def _parsed(target: str) -> tuple[str, int] | None:
    try:
        return parse_target(target)
    except ValueError:
        return None


class AllowAll:
    def allows(self, target: str) -> bool:
        return True


class StaticAllowList:
    def __init__(self, targets: Iterable[str]) -> None:
        """ValueError names an entry that is not host:port."""
        self.targets = {parse_target(t) for t in targets if t.strip()}

    def allows(self, target: str) -> bool:
        return _parsed(target) in self.targets


class EndpointsFileAllowList:
    """The prefill endpoints of the runner's endpoints file, read again whenever it changes.

    A list fixed at start cannot work on one machine: each engine's port is chosen as it
    starts, and scaling adds and removes engines. The file is what the EPP picks from, so
    the sidecar allows exactly what the EPP may name; the runner writes it atomically.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.targets: frozenset[tuple[str, int]] = frozenset()
        self._version: tuple[int, int, int] | None = None

    def allows(self, target: str) -> bool:
        self._refresh()
        return _parsed(target) in self.targets

    def _refresh(self) -> None:
        """One stat per check; an unreadable file keeps the last list (none at first)."""
        try:
            st = self.path.stat()
            version = (st.st_ino, st.st_mtime_ns, st.st_size)
            if version == self._version:
                return
            entries = endpoints.read(self.path)
        except (OSError, ValueError):
            return
        self._version = version
        self.targets = frozenset(
            (e.address, e.port) for e in entries if e.labels.get(ROLE_LABEL) == ROLE_PREFILL
        )


class PodSource(Protocol):
    """The pool's pods as a stream of ("SYNC", {"items": [pod, ...], "ports": [port, ...]})
    (the pool's target ports; first, and again after every reconnect, so deletions missed
    in between are dropped) and then
    ("ADDED"|"MODIFIED"|"DELETED", pod); pods as the API serves them (camelCase JSON)."""

    def events(self) -> Iterable[tuple[str, dict[str, Any]]]: ...


class PoolAllowList:
    """The IPs of the InferencePool's pods on its target ports, kept current by a watch.

    A pod with an IP is allowed whether or not it is Ready: the EPP only picks ready pods,
    and a pod that just turned unready may still be finishing a prefill it was sent.
    """

    def __init__(self, source: PodSource, retry_seconds: float = 5.0) -> None:
        self.source = source
        self.retry_seconds = retry_seconds
        self.ips: dict[str, str] = {}  # pod name -> IP
        self.ports: frozenset[int] = frozenset()
        self.lock = threading.Lock()

    def allows(self, target: str) -> bool:
        parsed = _parsed(target)
        with self.lock:
            return parsed is not None and parsed[1] in self.ports and parsed[0] in self.ips.values()

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "SYNC":
            ips = dict(filter(None, map(_name_ip, obj.get("items") or [])))
            ports = frozenset(int(p) for p in obj.get("ports") or [])
            with self.lock:
                self.ips, self.ports = ips, ports
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
            spec = self.cluster.inference_pool(self.namespace, self.pool)
            pods, version = self.cluster.list_pods(self.namespace, spec.selector)
            yield "SYNC", {"items": pods, "ports": [spec.target_port]}
            yield from self.cluster.watch_pods(self.namespace, spec.selector, version)
