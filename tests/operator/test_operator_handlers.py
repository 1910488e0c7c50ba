"""The plain functions behind the kopf handlers: leadership gates every write, child and
config events reach the right service, the webhook server is optional."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from opstate import NOW, NS, service

from kubefake import RecordedCluster
from pdserve.kube import Key
from pdserve.operator import handlers
from pdserve.operator.leader import Elector


def _runtime(cluster: RecordedCluster, lead: bool = True, **kw: object) -> handlers.Runtime:
    elector = Elector(cluster, "kserve", "pdserve-operator", "me")
    if lead:
        assert elector.try_acquire(NOW)
    return handlers.Runtime(cluster, elector, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def _cluster() -> RecordedCluster:
    cluster = RecordedCluster()
    cluster.put(service())
    return cluster


def test_a_follower_does_not_reconcile() -> None:
    cluster = _cluster()
    other = Elector(cluster, "kserve", "pdserve-operator", "other")
    assert other.try_acquire(NOW)
    rt = _runtime(cluster, lead=False)
    assert not rt.elector.try_acquire(NOW + datetime.timedelta(seconds=1))
    cluster.calls.clear()
    assert handlers.reconcile_service(rt, NS, "opt-pd") is None
    assert cluster.writes() == 0


def test_the_leader_reconciles_the_service_as_served_now() -> None:
    cluster = _cluster()
    out = handlers.reconcile_service(_runtime(cluster), NS, "opt-pd")
    assert out is not None and out.applied
    assert handlers.reconcile_service(_runtime(cluster), NS, "gone") is None


def test_namespaces_not_watched_are_left_alone() -> None:
    cluster = _cluster()
    rt = _runtime(cluster, namespaces=["elsewhere"])
    assert handlers.reconcile_service(rt, NS, "opt-pd") is None


def test_a_child_event_reconciles_its_owner() -> None:
    cluster = _cluster()
    rt = _runtime(cluster)
    handlers.reconcile_service(rt, NS, "opt-pd")
    dep = cluster.objects[Key("apps/v1", "Deployment", NS, "opt-pd-kserve")]
    dep["spec"]["replicas"] = 5  # drift: the event of this edit must undo it
    out = handlers.child_changed(rt, dep)
    assert out is not None and [k.name for k in out.applied] == ["opt-pd-kserve"]
    assert handlers.child_changed(rt, {"metadata": {"namespace": NS}}) is None


def test_a_config_event_reconciles_the_services_that_merge_it() -> None:
    cluster = _cluster()
    svc = service(name="uses")
    svc["spec"]["baseRefs"] = [{"name": "big"}]
    cluster.put(svc)
    cluster.put(
        {
            "apiVersion": "serving.kserve.io/v1alpha2",
            "kind": "LLMInferenceServiceConfig",
            "metadata": {"name": "big", "namespace": NS},
            "spec": {"replicas": 2},
        }
    )
    outs = handlers.config_changed(_runtime(cluster), NS, "big")
    assert len(outs) == 1
    dep = cluster.objects[Key("apps/v1", "Deployment", NS, "uses-kserve")]
    assert dep["spec"]["replicas"] == 2
    assert Key("apps/v1", "Deployment", NS, "opt-pd-kserve") not in cluster.objects


def test_webhooks_are_optional() -> None:
    rt = _runtime(_cluster(), webhook_port=0)
    assert asyncio.run(handlers.start_webhooks(rt)) is None


def test_webhooks_serve_the_secret_of_the_operators_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    async def serve(*args: object, **kw: object) -> str:
        calls.append((args, kw))
        return "runner"

    monkeypatch.setattr(handlers.webhooks, "serve", serve)
    cluster = _cluster()
    rt = _runtime(cluster, operator_namespace="ops", cert_manager=True)
    assert asyncio.run(handlers.start_webhooks(rt)) == "runner"
    assert calls == [(("0.0.0.0", 9443, None, cluster), {"namespace": "ops", "cert_manager": True})]


def test_the_kopf_registry_builds_without_a_cluster() -> None:
    import kopf

    registry = handlers.build_registry(_runtime(_cluster()))
    assert isinstance(registry, kopf.OperatorRegistry)


def test_becoming_leader_reconciles_every_service_once() -> None:
    cluster = _cluster()
    cluster.put(service(name="second"))
    rt = _runtime(cluster, lead=False)
    assert handlers.lease_tick(rt)
    for name in ("opt-pd-kserve", "second-kserve"):
        assert Key("apps/v1", "Deployment", NS, name) in cluster.objects
    cluster.calls.clear()
    assert handlers.lease_tick(rt)  # a renewal: the Lease is written, no service is
    assert cluster.calls["apply"] == 1 and cluster.calls["patch_status"] == 0
