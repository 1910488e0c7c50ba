"""Leader election on a Lease with two candidates and a fake clock."""

from __future__ import annotations

import datetime
from typing import Any

from kubefake import RecordedCluster
from pdserve.kube import Key
from pdserve.operator.leader import Elector

T0 = datetime.datetime(2026, 12, 2, 0, 0, tzinfo=datetime.UTC)


def _at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def _pair() -> tuple[RecordedCluster, Elector, Elector]:
    cluster = RecordedCluster()
    a = Elector(cluster, "kserve", "pdserve-operator", "a", lease_seconds=15)
    b = Elector(cluster, "kserve", "pdserve-operator", "b", lease_seconds=15)
    return cluster, a, b


def _spec(cluster: RecordedCluster, a: Elector) -> dict:
    return dict(cluster.objects[a.key]["spec"])


def test_first_candidate_takes_the_lease_the_second_follows() -> None:
    cluster, a, b = _pair()
    assert a.try_acquire(_at(0))
    assert not b.try_acquire(_at(1))
    assert a.is_leader(_at(1)) and not b.is_leader(_at(1))
    spec = _spec(cluster, a)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["acquireTime"] == spec["renewTime"] == "2026-12-02T00:00:00.000000Z"
    assert spec["leaseTransitions"] == 0


def test_renewal_keeps_the_lease_and_its_acquire_time() -> None:
    cluster, a, b = _pair()
    a.try_acquire(_at(0))
    for t in (5, 10, 15, 20):
        assert a.try_acquire(_at(t))
        assert not b.try_acquire(_at(t + 1))
    spec = _spec(cluster, a)
    assert spec["acquireTime"] == "2026-12-02T00:00:00.000000Z"
    assert spec["renewTime"] == "2026-12-02T00:00:20.000000Z"
    assert spec["leaseTransitions"] == 0


def test_expired_lease_is_taken_over_and_counted() -> None:
    cluster, a, b = _pair()
    a.try_acquire(_at(0))
    assert not b.try_acquire(_at(14.9))
    assert b.try_acquire(_at(15))  # a stopped renewing
    spec = _spec(cluster, a)
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    assert not a.try_acquire(_at(16))
    assert not a.is_leader(_at(16))


def test_a_leader_stops_acting_before_others_may_take_over() -> None:
    _, a, _ = _pair()
    a.try_acquire(_at(0))
    assert a.is_leader(_at(9.9))
    assert not a.is_leader(_at(10))  # two thirds of the lease, for clock skew


class _ReadBefore:
    """The cluster as a candidate saw it before another's write: a stale Lease."""

    def __init__(self, cluster: RecordedCluster, lease: dict[str, Any]) -> None:
        self.cluster, self.lease = cluster, lease

    def get(self, key: Key) -> dict[str, Any]:
        return self.lease

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        return self.cluster.apply(obj, field_manager)


def test_only_one_of_two_racing_candidates_wins() -> None:
    """Both read the expired Lease; the later write carries a stale resourceVersion."""
    cluster, a, b = _pair()
    a.try_acquire(_at(0))
    stale = cluster.get(a.key)
    assert stale is not None
    assert b.try_acquire(_at(20))
    c = Elector(_ReadBefore(cluster, stale), "kserve", "pdserve-operator", "c")  # type: ignore[arg-type]
    assert not c.try_acquire(_at(20))
    assert not c.is_leader(_at(20))
    assert _spec(cluster, a)["holderIdentity"] == "b"


def test_release_hands_over_at_once() -> None:
    _, a, b = _pair()
    a.try_acquire(_at(0))
    a.release(_at(2))
    assert not a.is_leader(_at(2))
    assert b.try_acquire(_at(3))
