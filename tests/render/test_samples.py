"""Every upstream KServe sample renders to objects the Kubernetes schemas and CRDs accept:
KServe v0.16's v1alpha1 samples with the x-k8s.io InferencePool, and the v1alpha2 samples of
KServe's main after v0.20 with the GA one.

The samples are named here rather than globbed, so the group's size is known even where the
folder is missing, and a sample added upstream fails `test_every_sample_is_listed` until it
is listed (and so rendered).
"""

from __future__ import annotations

import pytest
from schemas import check

from pdserve import api, render, wire
from testkit import REFERENCE

pytestmark = pytest.mark.conformance

V1ALPHA1 = "kserve-v0.16-samples"
V1ALPHA2 = "kserve-head-samples"
SHARED = [
    "llm-inference-service-facebook-opt-125m-cpu-no-scheduler.yaml",
    "llm-inference-service-facebook-opt-125m-cpu.yaml",
    "llm-inference-service-pd-facebook-opt-125m-cpu.yaml",
    "llm-inference-service-pd-qwen2-7b-gpu.yaml",
    "llm-inference-service-qwen2-7b-gpu-no-scheduler.yaml",
    "llm-inference-service-qwen2-7b-gpu.yaml",
]
LISTED = {
    V1ALPHA1: SHARED,
    V1ALPHA2: sorted([*SHARED, "llmisvc-single-gpu.yaml", "nemotron-3-ultra-pd.yaml"]),
}
SAMPLES = [f"{folder}/{name}" for folder, names in LISTED.items() for name in names]


@pytest.mark.parametrize("folder", sorted(LISTED))
def test_every_sample_is_listed(folder: str) -> None:
    assert sorted(p.name for p in (REFERENCE / folder).glob("*.yaml")) == LISTED[folder]


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_renders_valid_objects(sample: str) -> None:
    [service] = api.resolve_file(str(REFERENCE / sample))
    objs = render.render(service, certs=("crt", "key"))
    n, scheduler = service.name, "no-scheduler" not in sample
    pd = service.spec.prefill is not None
    assert pd == ("-pd" in sample)
    deployments = sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Deployment")
    assert deployments == sorted(
        [f"{n}-kserve"]
        + ([f"{n}-kserve-prefill"] if pd else [])
        + ([f"{n}-kserve-router-scheduler"] if scheduler else [])
    )
    pools = [o for o in objs if o["kind"] == "InferencePool"]
    assert [p["metadata"]["name"] for p in pools] == ([f"{n}-inference-pool"] if scheduler else [])
    ga = sample.startswith(V1ALPHA2)
    group, version = (
        (wire.POOL_GROUP_GA, wire.POOL_VERSION_GA) if ga else (wire.POOL_GROUP, wire.POOL_VERSION)
    )
    assert all(p["apiVersion"] == f"{group}/{version}" for p in pools)
    assert any(o["kind"] == "InferenceModel" for o in objs) == (scheduler and not ga)
    for obj in objs:
        check(obj)
    check(api.dump(service))  # the merged service still satisfies the LLMInferenceService CRD
