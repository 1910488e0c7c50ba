"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Two replicas of the operator reconciling the same service would fight over every field, so
only the holder of the Lease reconciles. The clock is passed in: the election is a pure
function of the Lease and `now`, tested with a fake clock. A takeover is applied with the
Lease's resourceVersion, so two candidates that both saw it expire cannot both win: the
API server refuses the second write (409), and that candidate stays a follower.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from pdserve.kube import Key, Objects

LEASE_API = "coordination.k8s.io/v1"
FIELD_MANAGER = "pdserve-operator-leader"
log = logging.getLogger(__name__)


def micro_time(t: datetime.datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, in UTC."""
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Elector:
    objects: Objects
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    leading_until: datetime.datetime | None = None  # our own view: renewed until then

    @property
    def key(self) -> Key:
        return Key(LEASE_API, "Lease", self.namespace, self.name)

    @property
    def renew_every(self) -> float:
        """Seconds between renewals: three tries before we stop acting as leader."""
        return self.lease_seconds / 4

    def is_leader(self, now: datetime.datetime) -> bool:
        """Without a call to the API: we renewed recently enough that no one else can hold it."""
        return self.leading_until is not None and now < self.leading_until

    def _lease(self, spec: dict[str, Any], resource_version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": LEASE_API, "kind": "Lease", "metadata": meta, "spec": spec}

    def try_acquire(self, now: datetime.datetime) -> bool:
        """Acquire, renew, or stay a follower; True when we hold the Lease after the call."""
        lease = self.objects.get(self.key)
        spec = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity")
        stamp = micro_time(now)
        held_by_other = holder and holder != self.identity
        if lease is not None and held_by_other and not self._expired(spec, now):
            self.leading_until = None
            return False
        new = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": stamp,
        }
        if holder == self.identity:
            new["acquireTime"] = spec.get("acquireTime") or stamp
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0)
        else:
            new["acquireTime"] = stamp
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        version = (lease or {}).get("metadata", {}).get("resourceVersion")
        try:
            self.objects.apply(self._lease(new, version), FIELD_MANAGER)
        except Exception as err:  # a conflict (another candidate won) or the API is down
            log.info("lease %s not taken: %s", self.key, err)
            self.leading_until = None
            return False
        if holder != self.identity:
            log.info("%s leads now (lease %s)", self.identity, self.key)
        # act as leader for two thirds of the lease only: a follower's clock may run ahead
        self.leading_until = now + datetime.timedelta(seconds=self.lease_seconds * 2 / 3)
        return True

    def _expired(self, spec: dict[str, Any], now: datetime.datetime) -> bool:
        renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        return renewed is None or now >= renewed + datetime.timedelta(seconds=duration)

    def release(self, now: datetime.datetime) -> None:
        """On shutdown: let the next candidate take over at once rather than after expiry."""
        if not self.is_leader(now):
            return
        lease = self.objects.get(self.key) or {}
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            return
        spec.update(holderIdentity="", renewTime=micro_time(now), leaseDurationSeconds=1)
        self.objects.apply(self._lease(spec), FIELD_MANAGER)
        self.leading_until = None
