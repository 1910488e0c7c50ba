"""The conversion webhook: ConversionReviews converted by `pdserve convert`'s code, metadata
kept but for the criticality annotations, and every failure one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.test_convert import V1
from pdserve.api.convert import LORA_CRITICALITIES, MODEL_CRITICALITY, V1ALPHA1, V1ALPHA2
from pdserve.api.convert_file import convert_file
from pdserve.operator.conversion import convert_review, review_conversion
from testkit import REPO, nested

OURS = [REPO / "examples/pd-smollm2.yaml", *sorted((REPO / "tests/render/data").glob("*.yaml"))]
SERVER_META = {
    "namespace": "team",
    "uid": "6f0c",
    "resourceVersion": "41",
    "generation": 2,
    "creationTimestamp": "2026-01-01T00:00:00Z",
    "labels": {"team": "a"},
    "finalizers": ["serving.kserve.io/llmisvc"],
    "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
}


def review(desired: str, *objects: Any, uid: str = "uid-7") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": list(objects)},
    }


def converted(desired: str, *objects: Any) -> list[dict[str, Any]]:
    out = review_conversion(review(desired, *objects))
    assert out["apiVersion"] == "apiextensions.k8s.io/v1" and out["kind"] == "ConversionReview"
    resp = out["response"]
    assert resp["uid"] == "uid-7"
    assert resp["result"] == {"status": "Success"}, resp["result"]
    assert [o["apiVersion"] for o in resp["convertedObjects"]] == [desired] * len(objects)
    return list(resp["convertedObjects"])


def failure(body: Any) -> str:
    resp = review_conversion(body)["response"]
    assert resp["result"]["status"] == "Failure" and resp["convertedObjects"] == []
    message = str(resp["result"]["message"])
    assert "\n" not in message
    return message


def as_stored(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as the API server holds it: server metadata and a status."""
    out = copy.deepcopy(doc)
    out["metadata"] = {**SERVER_META, **out["metadata"]}
    out["status"] = {
        "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ok"}],
    }
    if out["kind"] == "LLMInferenceService":
        out["status"]["url"] = "http://svc.team"
        out["status"]["addresses"] = [{"url": "http://svc.team", "name": "gateway"}]
    return out


def ours(version: str) -> list[dict[str, Any]]:
    found = [d for p in OURS for d in yaml.safe_load_all(p.read_text()) if d]
    return [as_stored(d) for d in found if d["apiVersion"] == version]


def test_our_v1alpha1_manifests_round_trip_through_v1alpha2() -> None:
    docs = ours(V1ALPHA1)
    assert len(docs) >= 6
    for doc in docs:
        [up] = converted(V1ALPHA2, doc)
        assert up["metadata"] == doc["metadata"], doc["metadata"]["name"]
        assert up["status"] == doc["status"]
        [down] = converted(V1ALPHA1, up)
        assert down == doc, doc["metadata"]["name"]


def test_a_v1alpha2_manifest_goes_down_as_pdserve_convert_prints_it() -> None:
    path = REPO / "tests/render/data/pd-cpu-v1alpha2.yaml"
    [doc] = yaml.safe_load_all(path.read_text())
    [expected], _ = convert_file(path, V1ALPHA1)
    [down] = converted(V1ALPHA1, doc)
    assert down == expected
    [back] = converted(V1ALPHA2, down)  # what v1alpha1 cannot hold is gone, the rest is back
    assert "kvCacheOffloading" not in back["spec"]
    assert back["spec"]["router"] == doc["spec"]["router"]


def test_what_v1alpha1_drops_is_named_for_the_log() -> None:
    [doc] = yaml.safe_load_all((REPO / "tests/render/data/pd-cpu-v1alpha2.yaml").read_text())
    doc["metadata"]["namespace"] = "team"
    _, dropped = convert_review(review(V1ALPHA1, doc))
    fields = ("spec.kvCacheOffloading", "spec.prefill.kvCacheOffloading", "spec.model.confidential")
    where = "LLMInferenceService team/opt-pd"
    assert dropped == [f"{where}: {f}: dropped, {V1ALPHA1} has no such field" for f in fields]


def test_criticality_travels_in_the_annotations_and_comes_back() -> None:
    doc = as_stored(yaml.safe_load(V1))
    [up] = converted(V1ALPHA2, doc)
    notes = up["metadata"]["annotations"]
    assert notes == {
        "team": "a",
        MODEL_CRITICALITY: "Sheddable",
        LORA_CRITICALITIES: '{"0":"Critical","2":"Standard"}',
    }
    assert "criticality" not in up["spec"]["model"]
    rest = {k: v for k, v in up["metadata"].items() if k != "annotations"}
    assert rest == {k: v for k, v in doc["metadata"].items() if k != "annotations"}
    assert up["status"] == doc["status"]
    [down] = converted(V1ALPHA1, up)
    assert down == doc
    assert json.loads(notes[LORA_CRITICALITIES]) == {"0": "Critical", "2": "Standard"}


def test_a_review_of_several_objects_and_versions_converts_each_in_order() -> None:
    v1, v2 = ours(V1ALPHA1), ours(V1ALPHA2)
    objects = [v1[0], v2[0], v1[1]]
    out = converted(V1ALPHA2, *objects)
    assert [o["metadata"]["name"] for o in out] == [o["metadata"]["name"] for o in objects]
    assert out[1] == v2[0]  # already there: unchanged


def test_an_empty_review_succeeds_with_no_objects() -> None:
    assert converted(V1ALPHA1) == []


FAILURES: dict[str, tuple[Any, str]] = {
    "not an object": ("x", "expected a ConversionReview object, got str"),
    "other review": (
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
        "expected apiVersion apiextensions.k8s.io/v1 and kind ConversionReview",
    ),
    "no uid": (review(V1ALPHA1, uid=""), "request.uid: required field is missing"),
    "unknown desired version": (
        review("serving.kserve.io/v1beta1"),
        "request.desiredAPIVersion: expected serving.kserve.io/v1alpha1 or "
        "serving.kserve.io/v1alpha2, got 'serving.kserve.io/v1beta1'",
    ),
    "objects not a list": (
        {**review(V1ALPHA1), "request": {"uid": "u", "desiredAPIVersion": V1ALPHA1, "objects": 3}},
        "request.objects: required field is missing or not a list",
    ),
    "object not a mapping": (
        review(V1ALPHA2, [1]),
        "request.objects[0]: expected a mapping (a Kubernetes object), got list",
    ),
    "invalid object": (
        review(V1ALPHA2, {**yaml.safe_load(V1), "spec": {"replicas": -1}}),
        "LLMInferenceService svc: spec.replicas: must be >= 0",
    ),
    "other kind": (
        review(V1ALPHA2, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
        "Pod p: kind: expected LLMInferenceService or LLMInferenceServiceConfig, got 'Pod'",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_failure_is_one_line(case: str) -> None:
    body, expected = FAILURES[case]
    assert expected in failure(body)


def test_a_failure_echoes_the_uid() -> None:
    resp = review_conversion(review(V1ALPHA2, [1]))["response"]
    assert resp["uid"] == "uid-7"


def test_an_invalid_object_fails_with_pdserve_validates_line(tmp_path: Path) -> None:
    doc = yaml.safe_load(V1)
    doc["spec"]["replica"] = 2
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc))
    from pdserve.api.loader import ManifestError

    with pytest.raises(ManifestError) as err:
        convert_file(path, V1ALPHA2)
    [line] = err.value.problems
    assert failure(review(V1ALPHA2, doc)) == "LLMInferenceService svc" + line.removeprefix(
        str(path)
    )


def test_an_object_nested_past_any_limit_fails_in_one_line() -> None:
    doc = yaml.safe_load(V1)
    doc["spec"]["template"] = {"containers": [{"name": "main", "x": nested(5000)}]}
    message = failure(review(V1ALPHA2, doc))  # pdserve validate's own line, naming it
    assert message.startswith(
        "LLMInferenceService svc: spec.template.containers[0].x: nested too deeply"
    )
    assert "\n" not in message
