"""Every upstream KServe sample renders to objects the Kubernetes schemas and CRDs accept.

The samples are named here rather than globbed, so the group's size is known even where the
folder is missing, and a sample added upstream fails `test_every_sample_is_listed` until it
is listed (and so rendered).
"""

from __future__ import annotations

import pytest
from schemas import check

from pdserve import api, render
from testkit import REFERENCE

pytestmark = pytest.mark.conformance

FOLDER = REFERENCE / "kserve-v0.16-samples"
SAMPLES = [
    "llm-inference-service-facebook-opt-125m-cpu-no-scheduler.yaml",
    "llm-inference-service-facebook-opt-125m-cpu.yaml",
    "llm-inference-service-pd-facebook-opt-125m-cpu.yaml",
    "llm-inference-service-pd-qwen2-7b-gpu.yaml",
    "llm-inference-service-qwen2-7b-gpu-no-scheduler.yaml",
    "llm-inference-service-qwen2-7b-gpu.yaml",
]


def test_every_sample_is_listed() -> None:
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == SAMPLES


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_renders_valid_objects(sample: str) -> None:
    [service] = api.resolve_file(str(FOLDER / sample))
    objs = render.render(service, certs=("crt", "key"))
    n, pd, scheduler = service.name, "-pd-" in sample, "no-scheduler" not in sample
    deployments = sorted(o["metadata"]["name"] for o in objs if o["kind"] == "Deployment")
    assert deployments == sorted(
        [f"{n}-kserve"]
        + ([f"{n}-kserve-prefill"] if pd else [])
        + ([f"{n}-kserve-router-scheduler"] if scheduler else [])
    )
    pools = [o["metadata"]["name"] for o in objs if o["kind"] == "InferencePool"]
    assert pools == ([f"{n}-inference-pool"] if scheduler else [])
    for obj in objs:
        check(obj)
    check(api.dump(service))  # the merged service still satisfies the LLMInferenceService CRD
