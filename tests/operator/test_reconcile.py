"""Reconcile against a recorded cluster: create, update, prune, drift, delete, idempotence."""

from __future__ import annotations

import datetime

from opstate import NOW, NS, RENDER_DATA, Harness, service

from pdserve import api, render
from pdserve.kube import Key
from pdserve.operator import children
from pdserve.operator.reconcile import subset

DEPLOY = "Deployment"
ROUTER_CHILDREN = {
    (DEPLOY, "opt-pd-kserve-router-scheduler"),
    ("Service", "opt-pd-epp-service"),
    ("ServiceAccount", "opt-pd-epp-sa"),
    ("Role", "opt-pd-epp-role"),
    ("RoleBinding", "opt-pd-epp-rb"),
    ("InferencePool", "opt-pd-inference-pool"),
    ("HTTPRoute", "opt-pd-kserve-route"),
}


def _deployment(h: Harness, name: str) -> dict:
    return h.cluster.objects[Key("apps/v1", DEPLOY, NS, name)]


def test_create_applies_every_child_owned_and_labelled() -> None:
    h = Harness()
    out = h.reconcile()
    assert {(k.kind, k.name) for k in out.applied} == h.kinds() - {
        ("LLMInferenceService", "opt-pd")
    }
    assert h.kinds() >= ROUTER_CHILDREN
    assert {(DEPLOY, "opt-pd-kserve"), (DEPLOY, "opt-pd-kserve-prefill")} <= h.kinds()
    for key in out.applied:
        meta = h.cluster.objects[key]["metadata"]
        assert meta["labels"][children.MANAGED_BY_LABEL] == "pdserve-operator"
        assert meta["labels"][children.SERVICE_LABEL] == "opt-pd"
        [owner] = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "serving.kserve.io/v1alpha2",
            "kind": "LLMInferenceService",
            "name": "opt-pd",
            "uid": "svc-opt-pd",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert out.status_written


def test_second_pass_with_no_change_writes_nothing() -> None:
    h = Harness(None, "ready.yaml")
    h.reconcile()
    h.cluster.calls.clear()
    out = h.reconcile(NOW + datetime.timedelta(minutes=5))
    assert h.cluster.writes() == 0
    assert out.applied == [] and out.pruned == [] and not out.status_written
    assert h.cluster.calls["list"] == len(children.CHILD_KINDS) + 2  # configs: two namespaces


def test_tls_secret_is_made_once_and_kept() -> None:
    h = Harness()
    h.reconcile()
    h.edit(replicas=2)
    h.reconcile()
    assert h.certs.made == 1
    secret = h.cluster.objects[Key("v1", "Secret", NS, "opt-pd-kserve-self-signed-certs")]
    assert secret["data"]["tls.crt"] == "Y3J0LTE="  # base64 of the first pair's "crt-1"


def test_replicas_changed_reapplies_only_the_decode_deployment() -> None:
    h = Harness()
    h.reconcile()
    h.edit(replicas=3)
    out = h.reconcile()
    assert [(k.kind, k.name) for k in out.applied] == [(DEPLOY, "opt-pd-kserve")]
    assert _deployment(h, "opt-pd-kserve")["spec"]["replicas"] == 3


def test_prefill_removed_then_added_back() -> None:
    h = Harness()
    h.reconcile()
    prefill = h.service()["spec"]["prefill"]
    h.edit(prefill=None)
    out = h.reconcile()
    assert [(k.kind, k.name) for k in out.pruned] == [(DEPLOY, "opt-pd-kserve-prefill")]
    assert (DEPLOY, "opt-pd-kserve-prefill") not in h.kinds()
    assert "PrefillWorkloadReady" not in h.types()
    h.edit(prefill=prefill)
    out = h.reconcile()
    assert (DEPLOY, "opt-pd-kserve-prefill") in {(k.kind, k.name) for k in out.applied}
    assert "PrefillWorkloadReady" in h.types()


def test_router_removed_prunes_scheduler_pool_and_route() -> None:
    h = Harness()
    h.reconcile()
    h.edit(router=None)
    out = h.reconcile()
    assert {(k.kind, k.name) for k in out.pruned} == ROUTER_CHILDREN
    assert not ROUTER_CHILDREN & h.kinds()
    assert {"GatewaysReady", "HTTPRoutesReady", "SchedulerWorkloadReady"}.isdisjoint(h.types())


def test_prune_leaves_objects_that_are_not_ours() -> None:
    h = Harness()
    h.reconcile()
    stranger = {
        "apiVersion": "apps/v1",
        "kind": DEPLOY,
        "metadata": {
            "name": "copied",
            "namespace": NS,
            "labels": children.managed_labels("opt-pd"),  # same labels, another owner
            "ownerReferences": [{"uid": "someone-else", "name": "x", "kind": "X"}],
        },
    }
    h.cluster.put(stranger)
    h.edit(router=None)
    h.reconcile()
    assert (DEPLOY, "copied") in h.kinds()


def test_drift_on_a_field_we_set_is_corrected() -> None:
    h = Harness()
    h.reconcile()
    _deployment(h, "opt-pd-kserve")["spec"]["replicas"] = 7  # someone kubectl-edited it
    _deployment(h, "opt-pd-kserve-prefill")["metadata"]["annotations"] = {"x": "y"}  # not ours
    out = h.reconcile()
    assert [(k.kind, k.name) for k in out.applied] == [(DEPLOY, "opt-pd-kserve")]
    assert _deployment(h, "opt-pd-kserve")["spec"]["replicas"] == 1


def test_delete_leaves_the_children_to_garbage_collection() -> None:
    h = Harness()
    h.reconcile()
    assert len(h.kinds()) > 10
    h.cluster.delete(h.key)
    assert h.kinds() == set()


def test_a_service_being_deleted_is_left_alone() -> None:
    h = Harness()
    h.cluster.objects[h.key]["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    h.reconcile()
    assert h.cluster.writes() == 0


def test_single_node_service_without_prefill() -> None:
    h = Harness(service(RENDER_DATA / "pd-cpu.yaml", name="solo"))
    obj = h.cluster.objects[h.key]
    obj["spec"].pop("prefill")
    h.reconcile()
    assert (DEPLOY, "solo-kserve") in h.kinds()
    assert not any(name.endswith("-prefill") for _, name in h.kinds())
    # written in v1alpha1: v0.16's pool and InferenceModel, pruned like the rest
    assert ("InferenceModel", "solo-inference-model") in h.kinds()


def test_subset_ignores_server_fields_and_catches_changes() -> None:
    want = {"spec": {"replicas": 2, "ports": [{"port": 8000}]}}
    live = {"spec": {"replicas": 2, "ports": [{"port": "8000", "protocol": "TCP"}], "x": 1}}
    assert subset(want, live)
    assert not subset({"spec": {"replicas": 3}}, live)
    assert not subset({"spec": {"ports": [{"port": 8000}, {"port": 9000}]}}, live)
    assert not subset({"a": True}, {"a": "True"})
    assert subset({"spec": {"emptyDir": {}, "x": []}}, {"spec": {}})  # the server omits empties


def test_every_kind_render_emits_is_one_pruning_walks() -> None:
    kinds = set(children.CHILD_KINDS)
    for path in sorted(RENDER_DATA.glob("*.yaml")):
        for svc in api.resolve_file(str(path)):
            for obj in render.render(svc):
                assert (obj["apiVersion"], obj["kind"]) in kinds, f"{path.name}: {obj['kind']}"
