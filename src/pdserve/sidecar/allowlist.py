"""Which prefill targets (host and port) the sidecar may call (SSRF protection).

In Kubernetes the allowed targets are the InferencePool's pods on its target port, followed
with a watch; on one machine, the prefill endpoints of the runner's endpoints file; else a
static list. A host alone is never enough: a sidecar that reaches every port of an allowed
host can be aimed at anything listening there (upstream's host-only list, llm-d-router
issue 979). All sit behind one small interface so the proxy does not care which it has.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pdserve import endpoints
from pdserve.pool_pods import KubernetesPods, PoolPods, pod_ip
from pdserve.wire import ROLE_LABEL, ROLE_PREFILL

__all__ = ["AllowList", "KubernetesPods", "PoolAllowList", "StaticAllowList"]


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


class PoolAllowList(PoolPods):
    """The IPs of the InferencePool's pods on its target ports, kept current by a watch
    (pool_pods.PoolPods, the follower the EPP uses too).

    A pod with an IP is allowed whether or not it is Ready: the EPP only picks ready pods,
    and a pod that just turned unready may still be finishing a prefill it was sent.
    """

    @property
    def ips(self) -> dict[str, str]:
        """Pod name -> IP."""
        _, pods, _ = self.snapshot()
        return dict(filter(None, map(_name_ip, pods)))

    _seen: int = -1
    _allowed: frozenset[tuple[str, int]] = frozenset()

    def allows(self, target: str) -> bool:
        """Rebuilt only when the pods changed: a check per proxied request stays a set hit."""
        parsed = _parsed(target)
        if parsed is None:
            return False
        if self.version != self._seen:
            version, pods, ports = self.snapshot()
            ips = {ip for p in pods if (ip := pod_ip(p))}
            self._allowed = frozenset((ip, port) for ip in ips for port in ports)
            self._seen = version
        return parsed in self._allowed


def _name_ip(pod: dict[str, Any]) -> tuple[str, str] | None:
    name = (pod.get("metadata") or {}).get("name", "")
    ip = (pod.get("status") or {}).get("podIP")
    return (name, ip) if ip else None
