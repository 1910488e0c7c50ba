"""Rendering: the child resources PROTOCOLS.md's table lists, multi-node pools, the CLI."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from schemas import check, check_core

from pdserve import api, render
from testkit import PDSERVE, REFERENCE, REPO

DATA = Path(__file__).parent / "data"
UPSTREAM_PD = REFERENCE / "kserve-v0.16-samples/llm-inference-service-pd-facebook-opt-125m-cpu.yaml"


def _objects(service: api.LLMInferenceService) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render.render(service)}


@pytest.mark.parametrize(
    "path",
    [DATA / "pd-cpu.yaml", pytest.param(UPSTREAM_PD, marks=pytest.mark.conformance)],
    ids=["ours", "kserve-v0.16-sample"],
)
def test_pd_service_matches_the_protocol_table(path: Path) -> None:
    [service] = api.resolve_file(str(path))
    objs = _objects(service)
    n = service.name
    decode = objs[("Deployment", f"{n}-kserve")]
    prefill = objs[("Deployment", f"{n}-kserve-prefill")]
    labels = decode["spec"]["template"]["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/component": "llminferenceservice-workload",
        "app.kubernetes.io/name": n,
        "app.kubernetes.io/part-of": "llminferenceservice",
        "kserve.io/component": "workload",
        "llm-d.ai/role": "decode",
    }
    plabels = prefill["spec"]["template"]["metadata"]["labels"]
    assert plabels["app.kubernetes.io/component"] == "llminferenceservice-workload-prefill"
    assert plabels["llm-d.ai/role"] == "prefill"
    assert decode["spec"]["replicas"] == 1 and prefill["spec"]["replicas"] == 1
    pod = decode["spec"]["template"]["spec"]
    [main] = [c for c in pod["containers"] if c["name"] == "main"]
    [sidecar] = [c for c in pod["initContainers"] if c["name"] == "llm-d-routing-sidecar"]
    assert [p["containerPort"] for p in main["ports"]] == [8001]
    assert sidecar["restartPolicy"] == "Always"
    assert [p["containerPort"] for p in sidecar["ports"]] == [8000]
    assert {"--port=8000", "--vllm-port=8001", "--connector=nixlv2"} <= set(sidecar["args"])
    assert {e["name"] for e in sidecar["env"]} >= {
        "INFERENCE_POOL_NAMESPACE",
        "INFERENCE_POOL_NAME",
    }
    [pmain] = prefill["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in pmain["ports"]] == [8000]
    assert "NixlConnector" in " ".join(pmain["args"]) and "NixlConnector" in " ".join(main["args"])
    svc = objs[("Service", f"{n}-kserve-workload-svc")]
    assert svc["spec"]["ports"][0]["port"] == 8000
    # selects the workload pods of both pools, the decode and the prefill ones
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= plabels.items()
    assert ("Secret", f"{n}-kserve-self-signed-certs") in objs
    for kind, name in [
        ("ServiceAccount", f"{n}-kserve"),
        ("Role", f"{n}-kserve-role"),
        ("RoleBinding", f"{n}-kserve-rb"),
        ("ServiceAccount", f"{n}-epp-sa"),
        ("Role", f"{n}-epp-role"),
        ("RoleBinding", f"{n}-epp-rb"),
    ]:
        assert (kind, name) in objs
    epp = objs[("Deployment", f"{n}-kserve-router-scheduler")]
    assert epp["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "llminferenceservice-router-scheduler"
    )
    ports = {p["containerPort"] for p in epp["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {9002, 9003, 9090}
    epp_args = epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "pd-profile-handler" in epp_args[epp_args.index("--config-text") + 1]
    assert ("Service", f"{n}-epp-service") in objs
    pool = objs[("InferencePool", f"{n}-inference-pool")]
    assert pool["spec"]["targetPortNumber"] == 8000
    assert pool["spec"]["extensionRef"]["name"] == f"{n}-epp-service"
    assert pool["spec"]["extensionRef"]["failureMode"] == "FailOpen"
    assert pool["spec"]["selector"].items() <= labels.items()
    model = objs[("InferenceModel", f"{n}-inference-model")]
    assert model["spec"]["criticality"] == "Critical"
    route = objs[("HTTPRoute", f"{n}-kserve-route")]
    rule = route["spec"]["rules"][0]
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": f"/default/{n}"}
    assert rule["filters"] == [
        {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
        }
    ]
    [backend] = rule["backendRefs"]
    assert backend["kind"] == "InferencePool" and backend["name"] == f"{n}-inference-pool"
    assert rule["timeouts"] == {"request": "0s", "backendRequest": "0s"}
    [parent] = route["spec"]["parentRefs"]
    assert parent["kind"] == "Gateway" and parent["name"] and parent["namespace"]


def test_multinode_renders_leaderworkersets_and_rdma_passes_through() -> None:
    [service] = api.resolve_file(str(DATA / "moe-multinode.yaml"))
    objs = _objects(service)
    lws = objs[("LeaderWorkerSet", "moe-kserve-mn")]
    assert ("LeaderWorkerSet", "moe-kserve-mn-prefill") in objs
    assert lws["spec"]["replicas"] == 2 and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    assert leader["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "roce-p2"
    [main] = [c for c in leader["spec"]["containers"] if c["name"] == "main"]
    script = main["args"][0]
    for flag in (
        "--data-parallel-size 16",
        "--data-parallel-size-local 8",
        "--data-parallel-address",
        "--data-parallel-rpc-port",
        "--data-parallel-start-rank",
        "--enable-expert-parallel",
    ):
        assert flag in script
    assert main["resources"]["limits"]["rdma/roce_gdr"] == "1"
    assert {"name": "VLLM_ALL2ALL_BACKEND", "value": "deepep_high_throughput"} in main["env"]
    for obj in objs.values():
        check_core(obj)  # CRD kinds: tests/render/test_conformance.py


def test_leaderworkerset_workers_are_outside_the_pool_and_service() -> None:
    """Workers run headless ranks (no HTTP server): only leaders may be selected."""
    [service] = api.resolve_file(str(DATA / "dp-multinode.yaml"))
    objs = _objects(service)
    selectors = [
        objs[("InferencePool", "dp-inference-pool")]["spec"]["selector"],
        objs[("Service", "dp-kserve-workload-svc")]["spec"]["selector"],
    ]
    for name, component in [("dp-kserve-mn", ""), ("dp-kserve-mn-prefill", "-prefill")]:
        group = objs[("LeaderWorkerSet", name)]["spec"]["leaderWorkerTemplate"]
        leader = group["leaderTemplate"]["metadata"]["labels"]
        worker = group["workerTemplate"]["metadata"]["labels"]
        assert leader["app.kubernetes.io/component"] == (
            f"llminferenceservice-workload-leader{component}"
        )
        assert worker["app.kubernetes.io/component"] == (
            f"llminferenceservice-workload-worker{component}"
        )
        assert "llm-d.ai/role" not in worker
        for selector in selectors:
            assert selector.items() <= leader.items()
            assert not selector.items() <= worker.items()


def test_render_cli_json_and_self_signed_secret() -> None:
    out = subprocess.run(
        [
            *PDSERVE,
            "render",
            "examples/pd-smollm2.yaml",
            "-o",
            "json",
            "--self-signed-certs",
            "-n",
            "team-a",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objs = json.loads(out)
    assert {o["metadata"]["namespace"] for o in objs} == {"team-a"}
    [secret] = [o for o in objs if o["kind"] == "Secret"]
    assert base64.b64decode(secret["data"]["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE")
    for obj in objs:
        check_core(obj)


OURS = sorted(DATA.glob("*.yaml")) + sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.conformance
@pytest.mark.parametrize("path", OURS, ids=[p.name for p in OURS])
def test_our_manifests_render_objects_the_crds_accept(path: Path) -> None:
    for service in api.resolve_file(str(path)):
        for obj in render.render(service, certs=("crt", "key")):
            check(obj)
        check(api.dump(service))
