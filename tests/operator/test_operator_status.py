"""Status as KServe v0.20 reports it, from recorded cluster states: each False condition has
a reason and a message that names the object a person must look at."""

from __future__ import annotations

import copy
import datetime

from opstate import NOW, NS, RENDER_DATA, Harness, service

from pdserve.kube import Key


def _ready(*more: str) -> Harness:
    h = Harness(None, "ready.yaml")
    h.reconcile()
    h.overlay(*more)
    return h


def test_all_ready() -> None:
    h = _ready()
    status = h.service()["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        t: "True"
        for t in (
            "Ready",
            "PresetsCombined",
            "WorkloadsReady",
            "RouterReady",
            "MainWorkloadReady",
            "PrefillWorkloadReady",
            "SchedulerWorkloadReady",
            "GatewaysReady",
            "HTTPRoutesReady",
            "InferencePoolReady",
        )
    }
    assert status["url"] == "http://10.0.0.7/llm/opt-pd"
    assert status["addresses"][0]["origin"]["name"] == "kserve-ingress-gateway"
    assert status["observedGeneration"] == 1
    assert status["workloads"]["primary"] == {
        "apiGroup": "apps",
        "kind": "Deployment",
        "name": "opt-pd-kserve",
        "readyReplicas": 1,
    }
    assert [c["name"] for c in status["appliedConfigs"]] == [
        "kserve-config-llm-scheduler",
        "kserve-config-llm-router-route",
        "kserve-config-llm-prefill-template",
        "kserve-config-llm-decode-template",
    ]
    assert {c["source"] for c in status["appliedConfigs"]} == {"Preset"}


def test_decode_unavailable_names_the_deployment() -> None:
    h = _ready("decode-unavailable.yaml")
    h.reconcile()
    main = h.condition("MainWorkloadReady")
    assert main["status"] == "False"
    assert main["reason"] == "MinimumReplicasUnavailable"
    assert main["message"].startswith("Deployment llm/opt-pd-kserve has 0/1 replicas available")
    for parent in ("WorkloadsReady", "Ready"):
        assert h.condition(parent)["message"] == main["message"]
    assert h.condition("PrefillWorkloadReady")["status"] == "True"


def test_prefill_unschedulable_names_the_pod_and_the_scheduler_message() -> None:
    h = _ready("prefill-unschedulable.yaml")
    h.reconcile()
    c = h.condition("PrefillWorkloadReady")
    assert (c["status"], c["reason"]) == ("False", "Unschedulable")
    assert "Deployment llm/opt-pd-kserve-prefill has 0/1 replicas available" in c["message"]
    assert "pod llm/opt-pd-kserve-prefill-6b9f7c8d5-x2x7q cannot be scheduled" in c["message"]
    assert "0/3 nodes are available: 3 Insufficient cpu." in c["message"]
    assert h.condition("MainWorkloadReady")["status"] == "True"


def test_gateway_missing_names_it() -> None:
    h = Harness(None, "ready.yaml")
    del h.cluster.objects[
        Key("gateway.networking.k8s.io/v1", "Gateway", "kserve", "kserve-ingress-gateway")
    ]
    h.reconcile()
    c = h.condition("GatewaysReady")
    assert (c["status"], c["reason"]) == ("False", "GatewayNotFound")
    assert "Gateway kserve/kserve-ingress-gateway does not exist" in c["message"]
    assert "HTTPRoute llm/opt-pd-kserve-route" in c["message"]
    assert h.condition("RouterReady")["reason"] == "GatewayNotFound"
    assert h.condition("Ready")["status"] == "False"
    assert "url" not in h.service()["status"]


def test_route_not_accepted_names_the_parent_and_its_reason() -> None:
    h = _ready("route-not-accepted.yaml")
    h.reconcile()
    c = h.condition("HTTPRoutesReady")
    assert (c["status"], c["reason"]) == ("False", "NotAllowedByListeners")
    assert c["message"].startswith(
        "HTTPRoute llm/opt-pd-kserve-route: Gateway kserve/kserve-ingress-gateway reports "
        "Accepted False: No listeners included"
    )
    assert h.condition("GatewaysReady")["status"] == "True"


def test_merge_error_is_status_not_a_crash() -> None:
    svc = service()
    svc["spec"]["baseRefs"] = [{"name": "small-pool"}]
    h = Harness(svc, "broken-config.yaml")
    out = h.reconcile()
    assert out.applied == [] and out.problems
    c = h.condition("PresetsCombined")
    assert (c["status"], c["reason"]) == ("False", "CombineBaseError")
    assert "LLMInferenceServiceConfig llm/small-pool" in c["message"]
    assert "replicas: must be >= 0" in c["message"]
    assert h.condition("Ready")["reason"] == "CombineBaseError"
    assert h.kinds() == {
        ("LLMInferenceService", "opt-pd"),
        ("LLMInferenceServiceConfig", "small-pool"),
    }


def test_missing_config_names_it() -> None:
    svc = service()
    svc["spec"]["baseRefs"] = [{"name": "nowhere"}]
    h = Harness(svc)
    h.reconcile()
    c = h.condition("PresetsCombined")
    assert c["reason"] == "CombineBaseError"
    assert "LLMInferenceServiceConfig 'nowhere' not found" in c["message"]


def test_transition_time_moves_only_when_status_flips() -> None:
    h = _ready()
    first = h.condition("MainWorkloadReady")["lastTransitionTime"]
    later = NOW + datetime.timedelta(minutes=3)
    h.overlay("decode-unavailable.yaml")
    out = h.reconcile(later)
    assert out.status_written
    assert h.condition("MainWorkloadReady")["lastTransitionTime"] == "2026-12-02T00:03:00Z"
    assert h.condition("PrefillWorkloadReady")["lastTransitionTime"] == first
    h.cluster.calls.clear()
    h.reconcile(later + datetime.timedelta(minutes=1))  # still unavailable: nothing to write
    assert h.cluster.writes() == 0


def test_scaling_reads_the_hpa() -> None:
    svc = service()
    svc["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 4, "wva": {"hpa": {}}}
    h = Harness(svc, "ready.yaml")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "opt-pd-kserve", "namespace": NS},
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetExternalMetric",
                    "message": "unable to get external metric wva_desired_replicas",
                },
            ]
        },
    }
    h.cluster.put(copy.deepcopy(hpa))
    h.reconcile()
    c = h.condition("ScalingReady")
    assert (c["status"], c["reason"]) == ("False", "FailedGetExternalMetric")
    assert c["message"].startswith("HorizontalPodAutoscaler llm/opt-pd-kserve:")
    assert "PrefillScalingReady" not in h.types()  # prefill has no scaling


LWS = ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")


def test_multinode_without_the_leaderworkerset_kind_says_so() -> None:
    h = Harness(service(RENDER_DATA / "dp-multinode.yaml"))
    h.cluster.missing_kinds.add(LWS)
    out = h.reconcile()
    assert Key(*LWS, NS, "dp-kserve-mn") not in out.applied
    for type_ in ("MainWorkloadReady", "PrefillWorkloadReady"):
        c = h.condition(type_)
        assert (c["status"], c["reason"]) == ("False", "NotFound")
        assert "LeaderWorkerSet llm/dp-kserve-mn" in c["message"]
        assert "no LeaderWorkerSet kind installed" in c["message"]


def test_multinode_groups_not_ready_name_the_leaderworkerset() -> None:
    h = Harness(service(RENDER_DATA / "dp-multinode.yaml"))
    h.reconcile()
    lws = h.cluster.objects[Key(*LWS, NS, "dp-kserve-mn")]
    lws["status"] = {
        "readyReplicas": 0,
        "conditions": [
            {"type": "Available", "status": "False", "reason": "GroupsNotReady", "message": "x"}
        ],
    }
    h.reconcile()
    for type_ in ("MainWorkloadReady", "WorkerWorkloadReady"):
        c = h.condition(type_)
        assert (c["status"], c["reason"]) == ("False", "GroupsNotReady")
        assert c["message"].startswith("LeaderWorkerSet llm/dp-kserve-mn has 0/1")
    assert "PrefillWorkerWorkloadReady" in h.types()
