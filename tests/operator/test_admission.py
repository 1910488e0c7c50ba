"""The admission webhook's verdicts: `pdserve validate`'s, line for line, on AdmissionReviews."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.test_validate import BAD, CONFIG, GOOD
from pdserve.cli import main
from pdserve.operator.admission import review_admission
from pdserve.operator.review import label
from testkit import REPO, nested

V1ALPHA2 = "serving.kserve.io/v1alpha2"
OURS = [REPO / "examples/pd-smollm2.yaml", *sorted((REPO / "tests/render/data").glob("*.yaml"))]


def review(obj: Any, operation: str = "CREATE", old: Any = None, **request: Any) -> dict[str, Any]:
    req = {"uid": "uid-1", "operation": operation, "namespace": "team", "object": obj, **request}
    if old is not None:
        req["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def answer(obj: Any, operation: str = "CREATE", old: Any = None, **req: Any) -> dict[str, Any]:
    out = review_admission(review(obj, operation, old, **req))
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    return dict(out["response"])


def validate_lines(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What `pdserve validate` prints for the text, the file's name cut off each line."""
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    code = main(["validate", str(path)])
    lines = capsys.readouterr().err.splitlines()
    assert (code == 0) == (lines == []), lines
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return [line.removeprefix(str(path)) for line in lines]


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_our_manifests_of_both_versions_are_allowed() -> None:
    objects = [d for p in OURS for d in docs(p)]
    assert {d["apiVersion"] for d in objects} == {"serving.kserve.io/v1alpha1", V1ALPHA2}
    for obj in objects:
        assert answer(obj) == {"uid": "uid-1", "allowed": True}, obj["metadata"]["name"]


def test_a_config_of_each_version_is_allowed() -> None:
    config = yaml.safe_load(CONFIG)
    assert answer(config)["allowed"]
    assert answer({**config, "apiVersion": V1ALPHA2})["allowed"]
    assert answer(yaml.safe_load(GOOD))["allowed"]


# Every BAD case that is one object on its own: not YAML-level ones (empty file, syntax),
# nor those that need a config from elsewhere (a cluster holds it; see the baseRef tests).
def _one_object(text: str) -> bool:
    try:
        return len([d for d in yaml.safe_load_all(text) if d is not None]) == 1
    except yaml.YAMLError:
        return False


CASES = sorted(
    name for name, (text, _) in BAD.items() if "baseRefs" not in text and _one_object(text)
)


def test_most_of_the_bad_table_applies() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("version", ["v1alpha1", "v1alpha2"])
@pytest.mark.parametrize("case", CASES)
def test_a_bad_object_is_denied_with_pdserve_validates_line(
    case: str, version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same object, as a file to `pdserve validate` and in a review: the same lines,
    the object's `Kind namespace/name` where validate names the file. In v1alpha2 a case may
    turn valid (or fail otherwise, criticality being no v1alpha2 field): the verdict still
    follows validate's."""
    text = BAD[case][0]
    if version == "v1alpha2":
        text = text.replace("serving.kserve.io/v1alpha1", V1ALPHA2)
    expected = validate_lines(text, tmp_path, capsys)
    obj = yaml.safe_load(text)
    resp = answer(obj)
    if not expected:
        assert resp == {"uid": "uid-1", "allowed": True}
        return
    where = label(obj, "request.object", "team")
    assert resp["allowed"] is False and resp["status"]["code"] == 422
    assert resp["status"]["message"] == "; ".join(where + line for line in expected)
    if version == "v1alpha1":
        assert BAD[case][1] in resp["status"]["message"]


def test_the_object_is_named_by_kind_namespace_and_name() -> None:
    obj = yaml.safe_load(BAD["negative replicas"][0])
    assert answer(obj)["status"]["message"] == (
        "LLMInferenceService team/svc: spec.replicas: must be >= 0"
    )
    obj["metadata"]["namespace"] = "own"
    assert answer(obj)["status"]["message"].startswith("LLMInferenceService own/svc: ")
    nameless = yaml.safe_load(BAD["missing name"][0])
    assert answer(nameless)["status"]["message"] == (
        "request.object: metadata.name: required field is missing"
    )


def test_every_problem_is_in_the_message_joined_by_semicolons() -> None:
    obj = yaml.safe_load(GOOD)
    obj["spec"]["replicas"] = -1
    obj["spec"]["prefill"]["replicas"] = -2
    message = answer(obj)["status"]["message"]
    assert message == (
        "LLMInferenceService team/svc: spec.replicas: must be >= 0; "
        "LLMInferenceService team/svc: spec.prefill.replicas: must be >= 0"
    )
    assert "\n" not in message


def _with_base_refs(*names: str) -> dict[str, Any]:
    obj = yaml.safe_load(GOOD)
    obj["spec"]["baseRefs"] = [{"name": n} for n in names]
    return obj


def test_the_merge_with_built_in_presets_is_checked() -> None:
    """Presets are known without a cluster read: merge, label checks and templating run."""
    obj = _with_base_refs("kserve-config-llm-template")
    assert answer(obj)["allowed"]
    obj["spec"]["labels"] = {"app.kubernetes.io/name": "other"}
    resp = answer(obj)
    assert not resp["allowed"]
    assert resp["status"]["message"].startswith(
        "LLMInferenceService team/svc: spec.labels.app.kubernetes.io/name: cannot override"
    )


def test_a_base_ref_to_a_config_on_the_cluster_is_left_to_the_operator() -> None:
    """Such a config is read from the cluster when reconciling; admission reads nothing, so
    the service is judged on its own document."""
    assert answer(_with_base_refs("kserve-config-llm-template", "team-config"))["allowed"]
    bad = _with_base_refs("team-config")
    bad["spec"]["replicas"] = -1
    assert "spec.replicas: must be >= 0" in answer(bad)["status"]["message"]


def test_delete_connect_and_subresources_are_always_allowed() -> None:
    bad = yaml.safe_load(BAD["negative replicas"][0])
    assert answer(bad, "DELETE", old=bad) == {"uid": "uid-1", "allowed": True}
    assert answer(None, "DELETE", old=bad)["allowed"]
    assert answer(bad, "CONNECT")["allowed"]
    assert answer(bad, "UPDATE", old=yaml.safe_load(GOOD), subResource="status")["allowed"]


def test_an_update_is_judged_when_it_changes_the_spec() -> None:
    good, bad = yaml.safe_load(GOOD), yaml.safe_load(BAD["negative replicas"][0])
    assert answer(good, "UPDATE", old=bad)["allowed"]
    assert answer(bad, "UPDATE", old=good)["status"]["code"] == 422
    relabelled = copy.deepcopy(bad)  # admitted before the webhook was: metadata may change
    relabelled["metadata"]["finalizers"] = ["serving.kserve.io/llmisvc"]
    assert answer(relabelled, "UPDATE", old=bad)["allowed"]
    leaving = copy.deepcopy(bad)
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    leaving["spec"]["replicas"] = -3
    assert answer(leaving, "UPDATE", old=bad)["allowed"]


def test_what_the_api_server_adds_to_an_object_passes() -> None:
    obj = yaml.safe_load(GOOD)
    obj["metadata"].update(
        uid="0b1c",
        resourceVersion="12",
        generation=3,
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
    )
    obj["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert answer(obj)["allowed"]


MALFORMED: dict[str, tuple[Any, str]] = {
    "not an object": ([1, 2], "expected a AdmissionReview object, got list"),
    "other review": (
        {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}},
        "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview",
    ),
    "no request": (
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
        "request: required field is missing or not an object",
    ),
    "no uid": (review({}, uid=None), "request.uid: required field is missing"),
    "unknown operation": (review({}, "PATCH"), "request.operation: expected one of CREATE"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_review_is_answered_400_in_one_line(case: str) -> None:
    body, expected = MALFORMED[case]
    resp = review_admission(body)["response"]
    assert resp["allowed"] is False and resp["status"]["code"] == 400
    assert expected in resp["status"]["message"] and "\n" not in resp["status"]["message"]
    assert resp["uid"] == ("uid-1" if case == "unknown operation" else "")


def test_an_object_nested_past_any_limit_is_a_denial_not_an_exception() -> None:
    obj = yaml.safe_load(GOOD)
    obj["spec"]["template"]["containers"][0]["x"] = nested(5000)
    resp = answer(obj)  # pdserve validate's own line for it, naming the object
    assert resp["allowed"] is False and resp["status"]["code"] == 422
    assert resp["status"]["message"].startswith("LLMInferenceService ")
    assert "spec.template.containers[0].x: nested too deeply" in resp["status"]["message"]
    assert "\n" not in resp["status"]["message"]
