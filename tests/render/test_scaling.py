"""Autoscalers: an HPA or a KEDA ScaledObject per pool that sets `scaling`, on that pool's
metric, and a workload without `replicas` for the autoscaler to own."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from schemas import check, check_core

from pdserve import api, render
from pdserve.render import scaling
from testkit import PDSERVE

DATA = Path(__file__).parent / "data"


def _objects(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    [service] = api.resolve_file(str(path))
    return {(o["kind"], o["metadata"]["name"]): o for o in render.render(service)}


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _service(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha2",
        "kind": "LLMInferenceService",
        "metadata": {"name": "s"},
        "spec": {"model": {"uri": "hf://org/model"}, **spec},
    }


def test_decode_hpa_on_kv_cache_with_behavior() -> None:
    objs = _objects(DATA / "pd-scaling.yaml")
    hpa = objs[("HorizontalPodAutoscaler", "pds-kserve-hpa")]
    check_core(hpa)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "pds-kserve",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    [m] = spec["metrics"]
    assert m["type"] == "Pods" and m["pods"]["metric"]["name"] == "vllm:kv_cache_usage_perc"
    assert m["pods"]["target"] == {"type": "AverageValue", "averageValue": "750m"}  # annotation
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert hpa["metadata"]["labels"]["app.kubernetes.io/name"] == "pds"


def test_prefill_scaled_object_on_waiting_requests_passes_keda_knobs() -> None:
    objs = _objects(DATA / "pd-scaling.yaml")
    so = objs[("ScaledObject", "pds-kserve-prefill-keda")]
    check(so)
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == "pds-kserve-prefill"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 8)
    assert spec["pollingInterval"] == 15 and spec["cooldownPeriod"] == 120
    assert spec["initialCooldownPeriod"] == 30 and spec["idleReplicaCount"] == 1
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 2}
    assert spec["advanced"] == {"restoreToOriginalReplicaCount": True}
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "http://prometheus.obs.svc:9090"
    assert meta["query"].startswith("sum(vllm:num_requests_waiting{")
    assert 'namespace="default"' in meta["query"] and "pds-kserve-prefill-" in meta["query"]
    assert meta["threshold"] == scaling.PREFILL_TARGET
    assert ("HorizontalPodAutoscaler", "pds-kserve-prefill-hpa") not in objs


def test_replicas_are_left_to_the_autoscaler() -> None:
    objs = _objects(DATA / "pd-scaling.yaml")
    for name in ("pds-kserve", "pds-kserve-prefill"):
        deployment = objs[("Deployment", name)]
        assert "replicas" not in deployment["spec"]
        check_core(deployment)
    assert objs[("Deployment", "pds-kserve-router-scheduler")]["spec"]["replicas"] == 1


def test_no_scaling_no_autoscaler_and_replicas_kept() -> None:
    objs = _objects(DATA / "pd-cpu.yaml")
    assert not {k for k, _ in objs} & {"HorizontalPodAutoscaler", "ScaledObject"}
    assert objs[("Deployment", "opt-pd-kserve")]["spec"]["replicas"] == 1


def test_direct_keda_on_a_leaderworkerset_keeps_the_users_triggers() -> None:
    objs = _objects(DATA / "mn-keda.yaml")
    so = objs[("ScaledObject", "mnk-kserve-keda")]
    check(so)
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "name": "mnk-kserve-mn",
    }
    assert so["spec"]["minReplicaCount"] == 1 and so["spec"]["pollingInterval"] == 10
    [trigger] = so["spec"]["triggers"]
    assert trigger["metadata"]["threshold"] == "32"
    assert "num_requests_running" in trigger["metadata"]["query"]
    assert "replicas" not in objs[("LeaderWorkerSet", "mnk-kserve-mn")]["spec"]


@pytest.mark.conformance
def test_a_scaled_leaderworkerset_satisfies_its_crd() -> None:
    check(_objects(DATA / "mn-keda.yaml")[("LeaderWorkerSet", "mnk-kserve-mn")])


def test_direct_keda_wins_over_wva(tmp_path: Path) -> None:
    keda = {"triggers": [{"type": "cpu", "metadata": {"value": "60"}}]}
    doc = _service(scaling={"maxReplicas": 2, "wva": {"hpa": {}}, "keda": keda})
    objs = _objects(_write(tmp_path, doc))
    assert ("HorizontalPodAutoscaler", "s-kserve-hpa") not in objs
    assert objs[("ScaledObject", "s-kserve-keda")]["spec"]["triggers"] == keda["triggers"]


def test_wva_keda_decode_query_selects_only_decode_pods(tmp_path: Path) -> None:
    import re

    doc = _service(scaling={"maxReplicas": 4, "wva": {"keda": {}}})
    so = _objects(_write(tmp_path, doc))[("ScaledObject", "s-kserve-keda")]
    check(so)
    [trigger] = so["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert query.startswith("sum(vllm:kv_cache_usage_perc{")
    assert trigger["metadata"]["serverAddress"] == scaling.DEFAULT_PROMETHEUS
    assert trigger["metadata"]["threshold"] == "0.8"
    [pattern] = re.findall(r'pod=~"([^"]+)"', query)
    assert re.fullmatch(pattern, "s-kserve-7d9c5b8f4-x2x9q")
    assert not re.fullmatch(pattern, "s-kserve-prefill-7d9c5b8f4-x2x9q")
    assert not re.fullmatch(pattern, "s-kserve-router-scheduler-7d9c5b8f4-x2x9q")


def test_scaled_manifests_render_objects_the_schemas_accept() -> None:
    for path in (DATA / "pd-scaling.yaml", DATA / "mn-keda.yaml"):
        for service in api.resolve_file(str(path)):
            for obj in render.render(service, certs=("crt", "key")):
                if obj["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
                    check(obj)
                else:
                    check_core(obj)


@pytest.mark.parametrize(
    ("value", "quantity"), [("0.8", "800m"), ("2", "2"), ("4.0", "4"), ("0.125", "125m")]
)
def test_targets_become_quantities(value: str, quantity: str) -> None:
    assert scaling.quantity(value) == quantity


def test_bad_target_annotation_is_one_line_exit_2(tmp_path: Path) -> None:
    doc = _service(scaling={"maxReplicas": 2, "wva": {"hpa": {}}})
    doc["metadata"]["annotations"] = {"pdserve.io/scaling-target-decode": "lots"}
    out = subprocess.run(
        [*PDSERVE, "render", str(_write(tmp_path, doc))], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "pdserve.io/scaling-target-decode" in out.stderr
