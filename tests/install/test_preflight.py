"""`pdserve preflight`: what a manifest needs of a cluster, checked on a recorded cluster
(tests/install/data/preflight-cluster.yaml) with pieces taken away."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kubefake import RecordedCluster
from pdserve import api, kube
from pdserve.install import preflight
from pdserve.kube import Key
from testkit import PDSERVE, REPO

CLUSTER = Path(__file__).parent / "data" / "preflight-cluster.yaml"
RENDER_DATA = REPO / "tests" / "render" / "data"
MOE = RENDER_DATA / "moe-multinode.yaml"  # v1alpha1, multi-node, 8 GPUs + RoCE, Multus
SCALED = RENDER_DATA / "pd-scaling.yaml"  # v1alpha2, HPA (decode) and KEDA (prefill)
SMALL = REPO / "examples" / "pd-smollm2.yaml"  # v1alpha1, CPU only
PLACED = REPO / "examples" / "multinode-placement.yaml"  # v1alpha2, multi-node GPUs


def _crd(name: str) -> Key:
    return Key("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name)


def _lines(path: Path, cluster: RecordedCluster) -> list[str]:
    [service] = api.resolve_file(str(path))
    return [str(f) for f in preflight.check(cluster, service)]


def _missing(path: Path, cluster: RecordedCluster) -> list[str]:
    return [line for line in _lines(path, cluster) if line.startswith("missing")]


@pytest.fixture
def cluster() -> RecordedCluster:
    return RecordedCluster.from_files(CLUSTER)


@pytest.mark.parametrize("path", [MOE, SCALED, SMALL, PLACED], ids=lambda p: p.name)
def test_a_complete_cluster_has_all_each_manifest_needs(
    path: Path, cluster: RecordedCluster
) -> None:
    lines = _lines(path, cluster)
    assert lines and all(line.startswith("ok ") for line in lines), lines
    assert cluster.writes() == 0


def test_a_multinode_gpu_manifest_checks_what_it_uses(cluster: RecordedCluster) -> None:
    lines = _lines(MOE, cluster)
    whats = [line.split(None, 1)[1] for line in lines]
    assert whats[:7] == [
        "CRD llminferenceservices.serving.kserve.io v1alpha1",
        "CRD leaderworkersets.leaderworkerset.x-k8s.io v1",
        "CRD inferencepools.inference.networking.x-k8s.io v1alpha2",
        "CRD inferencemodels.inference.networking.x-k8s.io v1alpha2",
        "CRD httproutes.gateway.networking.k8s.io v1",
        "CRD gateways.gateway.networking.k8s.io v1",
        "Gateway kserve/kserve-ingress-gateway",
    ]
    assert (
        "nodes for moe-kserve-mn leader: nvidia.com/gpu=8, rdma/roce_gdr=1 "
        "(2 of 3 node(s) have it allocatable)" in whats
    )
    assert "NetworkAttachmentDefinition default/roce-p2" in whats
    assert not any("keda" in w or "APIService" in w for w in whats)


def test_the_pool_group_follows_the_manifests_version(cluster: RecordedCluster) -> None:
    v1alpha1 = " ".join(_lines(SMALL, cluster))
    v1alpha2 = " ".join(_lines(PLACED, cluster))
    assert "inferencepools.inference.networking.x-k8s.io v1alpha2" in v1alpha1
    assert "inferencepools.inference.networking.k8s.io v1" not in v1alpha1
    assert "inferencepools.inference.networking.k8s.io v1" in v1alpha2
    assert "x-k8s.io" not in v1alpha2.replace("leaderworkerset.x-k8s.io", "")


def test_each_missing_piece_is_one_missing_line(cluster: RecordedCluster) -> None:
    for key in [
        _crd("leaderworkersets.leaderworkerset.x-k8s.io"),
        _crd("inferencemodels.inference.networking.x-k8s.io"),
        Key("gateway.networking.k8s.io/v1", "Gateway", "kserve", "kserve-ingress-gateway"),
        Key("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "roce-p2"),
    ]:
        cluster.delete(key)
    assert _missing(MOE, cluster) == [
        "missing  CRD leaderworkersets.leaderworkerset.x-k8s.io v1",
        "missing  CRD inferencemodels.inference.networking.x-k8s.io v1alpha2",
        "missing  Gateway kserve/kserve-ingress-gateway",
        "missing  NetworkAttachmentDefinition default/roce-p2",
    ]


def test_gpu_nodes_are_needed_with_all_their_resources_on_one_node(
    cluster: RecordedCluster,
) -> None:
    def allocatable(name: str) -> dict[str, str]:
        node: dict[str, dict[str, dict[str, str]]] = cluster.objects[Key("v1", "Node", None, name)]
        return node["status"]["allocatable"]

    # one node has the GPUs but no RoCE, the other RoCE but too few GPUs
    del allocatable("gpu-1")["rdma/roce_gdr"]
    allocatable("gpu-2")["nvidia.com/gpu"] = "4"
    assert _missing(MOE, cluster) == [
        "missing  nodes for moe-kserve-mn leader: nvidia.com/gpu=8, rdma/roce_gdr=1 "
        "(0 of 3 node(s) have it allocatable)"
    ]


def test_a_crd_that_does_not_serve_the_version_is_missing(cluster: RecordedCluster) -> None:
    crd = cluster.objects[_crd("inferencepools.inference.networking.k8s.io")]
    crd["spec"]["versions"] = [{"name": "v1alpha2", "served": True, "storage": True}]
    assert _missing(PLACED, cluster) == [
        "missing  CRD inferencepools.inference.networking.k8s.io v1 (serves v1alpha2)"
    ]


def test_scaling_needs_keda_and_the_custom_metrics_api(cluster: RecordedCluster) -> None:
    assert "ok       CRD scaledobjects.keda.sh v1alpha1" in _lines(SCALED, cluster)
    cluster.delete(_crd("scaledobjects.keda.sh"))
    cluster.delete(Key("apiregistration.k8s.io/v1", "APIService", None, preflight.CUSTOM_METRICS))
    assert _missing(SCALED, cluster) == [
        "missing  CRD scaledobjects.keda.sh v1alpha1",
        "missing  APIService v1beta1.custom.metrics.k8s.io (for the HPA's metric)",
    ]


def test_a_cpu_manifest_needs_no_node_and_no_network(cluster: RecordedCluster) -> None:
    text = " ".join(_lines(SMALL, cluster))
    assert "nodes for" not in text and "NetworkAttachmentDefinition" not in text


@pytest.mark.parametrize(
    ("value", "networks"),
    [
        ("roce-p2", [("team", "roce-p2")]),
        ("infra/roce-p2@net1, roce-p3", [("infra", "roce-p2"), ("team", "roce-p3")]),
        (
            '[{"name": "roce-p2", "namespace": "infra"}, {"name": "x"}]',
            [("infra", "roce-p2"), ("team", "x")],
        ),
    ],
)
def test_multus_annotations_both_forms(value: str, networks: list[tuple[str, str]]) -> None:
    assert preflight._networks(value, "team") == networks


def test_main_exit_status_follows_the_findings(
    cluster: RecordedCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(kube, "ApiObjects", lambda: cluster)
    assert preflight.main(["preflight", str(MOE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.startswith("ok ") for line in out)
    cluster.delete(_crd("leaderworkersets.leaderworkerset.x-k8s.io"))
    assert preflight.main(["preflight", str(MOE), "--namespace", "default"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if not line.startswith("ok ")] == [
        "missing  CRD leaderworkersets.leaderworkerset.x-k8s.io v1"
    ]


def test_no_kubeconfig_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "none"))
    out = subprocess.run(
        [*PDSERVE, "preflight", str(SMALL)], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("pdserve preflight: ")
