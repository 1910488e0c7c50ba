"""Two services, one InferencePool (KServe v0.19+'s multi-GPU-vendor pattern): a service with
no router labels its pods with another service's pool labels, and that pool selects both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from schemas import check_core

from pdserve import api, render
from pdserve.cli import main

SHARED = Path(__file__).parent / "data" / "shared-pool.yaml"
POOL_SELECTOR = {
    "app.kubernetes.io/name": "chat-h100",
    "app.kubernetes.io/part-of": "llminferenceservice",
    "kserve.io/component": "workload",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Each service's objects by (kind, name)."""
    return {
        s.name: {(o["kind"], o["metadata"]["name"]): o for o in render.render(s)}
        for s in api.resolve_file(str(SHARED))
    }


def test_the_shared_pool_manifest_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SHARED)]) == 0
    assert capsys.readouterr().out == "1 file(s) valid\n"


def test_the_pool_of_one_selects_the_pods_of_both(rendered: dict[str, Any]) -> None:
    pool = rendered["chat-h100"][("InferencePool", "chat-h100-inference-pool")]
    assert pool["spec"]["selector"] == POOL_SELECTOR
    for service, deployment in [
        ("chat-h100", "chat-h100-kserve"),
        ("chat-mi300", "chat-mi300-kserve"),
    ]:
        pod = rendered[service][("Deployment", deployment)]["spec"]["template"]["metadata"]
        assert POOL_SELECTOR.items() <= pod["labels"].items(), service


def test_the_joining_pods_keep_their_role_and_the_users_other_labels(
    rendered: dict[str, Any],
) -> None:
    pod = rendered["chat-mi300"][("Deployment", "chat-mi300-kserve")]["spec"]["template"]
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/component": "llminferenceservice-workload",
        "app.kubernetes.io/name": "chat-h100",
        "app.kubernetes.io/part-of": "llminferenceservice",
        "kserve.io/component": "workload",
        "llm-d.ai/role": "both",
        "team": "inference",
    }


def test_each_deployment_selects_its_pods_by_what_they_carry(rendered: dict[str, Any]) -> None:
    """The API server refuses a Deployment whose selector misses its own pod template."""
    deployment = rendered["chat-mi300"][("Deployment", "chat-mi300-kserve")]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/component": "llminferenceservice-workload",
        "app.kubernetes.io/name": "chat-h100",
        "app.kubernetes.io/part-of": "llminferenceservice",
        "kserve.io/component": "workload",
        "llm-d.ai/role": "both",
    }
    assert deployment["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    check_core(deployment)


def test_the_joining_services_render_no_router(rendered: dict[str, Any]) -> None:
    for service in ("chat-mi300", "chat-mi300-mn"):
        kinds = sorted(kind for kind, _ in rendered[service])
        workload = "LeaderWorkerSet" if service.endswith("-mn") else "Deployment"
        assert kinds == sorted(
            [workload, "Role", "RoleBinding", "Secret", "Service", "ServiceAccount"]
        ), service


def test_multi_node_workers_stay_out_of_the_pool(rendered: dict[str, Any]) -> None:
    """Workers run headless engine ranks: a user label must not put them behind the pool."""
    group = rendered["chat-mi300-mn"][("LeaderWorkerSet", "chat-mi300-mn-kserve-mn")]
    template = group["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["metadata"]["labels"]
    worker = template["workerTemplate"]["metadata"]["labels"]
    assert POOL_SELECTOR.items() <= leader.items()
    assert worker == {
        "app.kubernetes.io/component": "llminferenceservice-workload-worker",
        "app.kubernetes.io/name": "chat-mi300-mn",
        "app.kubernetes.io/part-of": "llminferenceservice",
    }
