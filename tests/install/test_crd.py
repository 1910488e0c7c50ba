"""The CRDs generated from the API models: structural, with KServe's names and columns, and
accepting what pdserve accepts; of the malformed manifests `pdserve validate` rejects
(tests/api/test_validate.py's BAD), the schema rejects every one a schema can express."""

from __future__ import annotations

import glob
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from installkit import own_errors

from pdserve.api.convert import to_v1alpha2
from pdserve.install import crd
from testkit import REFERENCE, REPO

OWN = sorted(
    str(Path(p).relative_to(REPO))
    for p in [
        *glob.glob(str(REPO / "tests/render/data/*.yaml")),
        str(REPO / "examples/pd-smollm2.yaml"),
        *glob.glob(str(REPO / "src/pdserve/api/presets/*.yaml")),
    ]
)
INT_OR_STRING = "x-kubernetes-int-or-string"
PRESERVE = "x-kubernetes-preserve-unknown-fields"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _structural_problems(node: dict[str, Any], where: str) -> list[str]:
    """Kubernetes' rules for a structural schema (and its other openAPIV3Schema limits)."""
    out = []
    if "$ref" in node or "$defs" in node or "const" in node or "title" in node:
        out.append(f"{where}: $ref, $defs, const or title")
    if "type" not in node and not (node.get(INT_OR_STRING) or node.get(PRESERVE)):
        out.append(f"{where}: no type")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{where}: both properties and additionalProperties")
    if node.get("additionalProperties") is False:
        out.append(f"{where}: additionalProperties: false")
    if "anyOf" in node and node["anyOf"] != [{"type": "integer"}, {"type": "string"}]:
        out.append(f"{where}: anyOf other than int-or-string")
    for key in ("oneOf", "allOf", "not", "default"):
        if key in node:
            out.append(f"{where}: {key}")
    for name, child in (node.get("properties") or {}).items():
        out += _structural_problems(child, f"{where}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        out += _structural_problems(node["additionalProperties"], f"{where}.*")
    if "items" in node:
        out += _structural_problems(node["items"], f"{where}[]")
    if node.get("type") == "array" and "items" not in node:
        out.append(f"{where}: array without items")
    return out


@pytest.mark.parametrize("obj", crd.crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_is_a_valid_structural_crd(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, "1.33.0", strict=True)
    for version in obj["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        assert _structural_problems(schema, version["name"]) == []
        assert schema["properties"]["metadata"] == {"type": "object"}
        assert schema["properties"]["status"] == {"type": "object", PRESERVE: True}


def test_crd_facts() -> None:
    service, config = crd.crds()
    assert service["metadata"]["name"] == "llminferenceservices.serving.kserve.io"
    assert config["metadata"]["name"] == "llminferenceserviceconfigs.serving.kserve.io"
    assert service["spec"]["names"]["shortNames"] == ["llmisvc"]
    for obj in (service, config):
        spec = obj["spec"]
        assert (spec["group"], spec["scope"]) == ("serving.kserve.io", "Namespaced")
        assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [
            ("v1alpha1", True, False),
            ("v1alpha2", True, True),
        ]
        assert all(v["subresources"] == {"status": {}} for v in spec["versions"])
        assert spec["conversion"] == {
            "strategy": "Webhook",
            "webhook": {
                "clientConfig": {
                    "service": {
                        "name": "pdserve-webhook",
                        "namespace": "pdserve-system",
                        "path": "/convert",
                        "port": 443,
                    }
                },
                "conversionReviewVersions": ["v1"],
            },
        }
    columns = [c["name"] for c in service["spec"]["versions"][1]["additionalPrinterColumns"]]
    assert columns == ["URL", "Ready", "Reason", "Age", "URLs"]
    columns = [c["name"] for c in config["spec"]["versions"][1]["additionalPrinterColumns"]]
    assert columns == ["Ready", "Reason", "Age"]


def test_schema_keeps_bounds_enums_and_quantities() -> None:
    spec = crd.openapi_schema(crd.VERSIONS["v1alpha2"]["LLMInferenceService"])["properties"]
    spec = spec["spec"]["properties"]
    assert spec["replicas"] == {"type": "integer", "minimum": 0, "nullable": True}
    parallelism = spec["parallelism"]["properties"]
    assert parallelism["dataRPCPort"]["maximum"] == 65535
    cpu = spec["kvCacheOffloading"]["properties"]["cpu"]
    assert cpu[INT_OR_STRING] is True and "pattern" in cpu
    template = spec["template"]
    assert template[PRESERVE] is True and template["type"] == "object"
    assert spec["labels"]["additionalProperties"] == {"type": "string"}


@pytest.mark.parametrize("path", OWN)
def test_own_manifests_are_accepted_in_their_version_and_in_v1alpha2(path: str) -> None:
    for doc in _docs(REPO / path):
        assert own_errors(doc) == []
        assert own_errors(to_v1alpha2(doc)) == []


# tests/api/test_validate.py's BAD table, sorted by who rejects each case on a cluster.
SCHEMA_REJECTS = [
    "args not a list",
    "bad criticality",
    "container without name",
    "env without name",
    "expert not bool",
    "gateway ref without name",
    "lora maxRank zero",
    "negative prefill replicas",
    "negative replicas",
    "port out of range",
    "prefill unknown field",
    "replicas wrong type",
    "rpc port too high",
    "spec not a mapping",
    "tensor zero",
    "unknown model field",
    "unknown router field",
    "unknown scheduler field",
    "unknown spec field",
]
# Rules across fields or files, which the schema accepts and the validating webhook rejects.
WEBHOOK_REJECTS = [
    "component label on a service without a router",
    "label takes the pods out of the service's own pool",
    "missing baseRef",
    "missing model",
    "missing model uri",
    "missing template key",
    "prefill label overrides the role",
    "prefill label takes the pods out of the service's own pool",
    "replicas and scaling",
    "role label on a service without a router",
    "scheduler label overrides the component",
    "unknown uri scheme",
]
# Not an object of our CRDs at all: kubectl or the API server refuses it before any schema.
NOT_OURS = [
    "duplicate yaml indent error",
    "empty file",
    "missing name",
    "not a mapping",
    "only comments",
    "wrong apiVersion",
    "wrong kind",
    "yaml syntax error",
]


@cache
def _bad() -> dict[str, tuple[str, str]]:
    """The BAD table, loaded under a name of its own so pytest does not collect it twice."""
    spec = importlib.util.spec_from_file_location(
        "validate_cases", REPO / "tests/api/test_validate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.BAD)


def _first_doc(case: str) -> dict[str, Any]:
    text, _ = _bad()[case]
    doc = next(d for d in yaml.safe_load_all(text) if d is not None)
    assert isinstance(doc, dict)
    return doc


def test_every_bad_case_is_sorted() -> None:
    assert sorted(SCHEMA_REJECTS + WEBHOOK_REJECTS + NOT_OURS) == sorted(_bad())


@pytest.mark.parametrize("case", SCHEMA_REJECTS)
def test_schema_rejects(case: str) -> None:
    doc = _first_doc(case)
    assert own_errors(doc), f"the CRD schema accepts {case!r}"
    if case != "bad criticality":  # v1alpha2 keeps a criticality in an annotation
        as_v1alpha2 = {**doc, "apiVersion": f"{crd.GROUP}/v1alpha2"}
        assert own_errors(as_v1alpha2), f"the v1alpha2 schema accepts {case!r}"


@pytest.mark.parametrize("case", WEBHOOK_REJECTS)
def test_schema_leaves_cross_field_rules_to_the_webhook(case: str) -> None:
    assert own_errors(_first_doc(case)) == []


def test_missing_name_is_only_metadata() -> None:
    """The API server requires metadata.name; the schema leaves metadata to it."""
    assert own_errors(_first_doc("missing name")) == []


V1ALPHA1_SAMPLES = "kserve-v0.16-samples"
V1ALPHA2_SAMPLES = "kserve-head-samples"
_SHARED = [
    "llm-inference-service-facebook-opt-125m-cpu-no-scheduler.yaml",
    "llm-inference-service-facebook-opt-125m-cpu.yaml",
    "llm-inference-service-pd-facebook-opt-125m-cpu.yaml",
    "llm-inference-service-pd-qwen2-7b-gpu.yaml",
    "llm-inference-service-qwen2-7b-gpu-no-scheduler.yaml",
    "llm-inference-service-qwen2-7b-gpu.yaml",
]
SAMPLES = {
    V1ALPHA1_SAMPLES: _SHARED,
    V1ALPHA2_SAMPLES: sorted([*_SHARED, "llmisvc-single-gpu.yaml", "nemotron-3-ultra-pd.yaml"]),
}
VERSION_OF = {
    V1ALPHA1_SAMPLES: "serving.kserve.io/v1alpha1",
    V1ALPHA2_SAMPLES: crd.GROUP + "/v1alpha2",
}


@pytest.mark.conformance
@pytest.mark.parametrize("folder", sorted(SAMPLES))
def test_every_upstream_sample_is_listed(folder: str) -> None:
    assert sorted(p.name for p in (REFERENCE / folder).glob("*.yaml")) == SAMPLES[folder]


@pytest.mark.conformance
@pytest.mark.parametrize(
    "sample", [f"{folder}/{name}" for folder, names in SAMPLES.items() for name in names]
)
def test_upstream_sample_is_accepted(sample: str) -> None:
    folder = sample.split("/")[0]
    [doc] = _docs(REFERENCE / sample)
    assert doc["apiVersion"] == VERSION_OF[folder]
    assert own_errors(doc) == []
