"""Child names: knative's ChildName, and every reference in the rendered set names an object
that is in it, even when a long service name is hashed down to 63 characters."""

from __future__ import annotations

from typing import Any

import pytest
from schemas import check, check_core

from pdserve import api, render
from pdserve.api.loader import parse
from pdserve.api.template import child_name

# knative.dev/pkg kmeta TestChildName's cases (expected values are its published outputs)
KNATIVE = [
    ("asdf", "-deployment", "asdf-deployment"),
    ("f" * 63, "-deployment", "ffffffffffffffffffff105d7597f637e83cc711605ac3ea4957-deployment"),
    ("f" * 63, "-deploy", "ffffffffffffffffffffffff105d7597f637e83cc711605ac3ea4957-deploy"),
    ("f" * 63, "f" * 63, "fffffffffffffffffffffffffffffff0502661254f13c89973cb3a83e0cbec0"),
    ("a", "f" * 63, "ab5cfd486935decbc0d305799f4ce4414ffffffffffffffffffffffffffffff"),
    ("b" * 32, "f" * 32, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb329c7c81b9ab3ba71aa139066aa5625d"),
    ("aaaa", "b---a" * 20, "aaaa7a3f7966594e3f0849720eced8212c18b---ab---ab---ab---ab---ab"),
    (
        "a" * 17,
        "a.-.-.-.-.-.-.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaa1eb10dc911444f8434af83b7225442da",
    ),
]


@pytest.mark.parametrize(("parent", "suffix", "want"), KNATIVE)
def test_child_name_matches_knative(parent: str, suffix: str, want: str) -> None:
    assert child_name(parent, suffix) == want


LONG = "a-very-long-llm-inference-service-name-for-the-team-ml-prod1"


def _pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Deployment":
        return [obj["spec"]["template"]]
    if obj["kind"] == "LeaderWorkerSet":
        group = obj["spec"]["leaderWorkerTemplate"]
        return [group["leaderTemplate"], group["workerTemplate"]]
    return []


def _references(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every object `obj` points at by name."""
    refs: list[tuple[str, str]] = []
    for pod in _pods(obj):
        spec = pod["spec"]
        if "serviceAccountName" in spec:
            refs.append(("ServiceAccount", spec["serviceAccountName"]))
        for v in spec.get("volumes") or []:
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"]))
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            args = c.get("args") or []
            if "--pool-name" in args:
                refs.append(("InferencePool", args[args.index("--pool-name") + 1]))
            for e in c.get("env") or []:
                if e["name"] == "INFERENCE_POOL_NAME":
                    refs.append(("InferencePool", e["value"]))
    if obj["kind"] == "RoleBinding":
        refs.append(("Role", obj["roleRef"]["name"]))
        refs += [("ServiceAccount", s["name"]) for s in obj["subjects"]]
    if obj["kind"] == "InferencePool":
        refs.append(("Service", obj["spec"]["extensionRef"]["name"]))
    if obj["kind"] == "InferenceModel":
        refs.append(("InferencePool", obj["spec"]["poolRef"]["name"]))
    if obj["kind"] == "HTTPRoute":
        for rule in obj["spec"]["rules"]:
            refs += [(b["kind"], b["name"]) for b in rule["backendRefs"]]
    return refs


def long_named(multinode: bool) -> list[dict[str, Any]]:
    """Every child of a P/D service whose name is too long for most suffixes."""
    spec: dict[str, Any] = {
        "replicas": 1,
        "prefill": {"replicas": 1},
        "router": {"scheduler": {}, "route": {}, "gateway": {}},
    }
    if multinode:
        spec["parallelism"] = {"data": 4, "dataLocal": 2}
        spec["worker"] = {"containers": [{"name": "main"}]}
    doc = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LLMInferenceService",
        "metadata": {"name": LONG},
        "spec": {"model": {"uri": "hf://org/model"}, **spec},
    }
    return render.render(api.resolve(parse(doc, "svc")), certs=("crt", "key"))


SHAPES = pytest.mark.parametrize(
    "multinode", [False, True], ids=["deployments", "leaderworkersets"]
)


@SHAPES
def test_long_service_name_renders_consistent_names(multinode: bool) -> None:
    assert len(LONG) == 60
    objs = long_named(multinode)
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert len(rendered) == len(objs), "two objects share a kind and name"
    for kind, name in rendered:
        assert len(name) <= 63, (kind, name)
    pools = [p for o in objs for p in _pods(o)]
    seen: set[str] = set()
    for obj in objs:
        check_core(obj)  # CRD kinds: tests/render/test_conformance.py
        for ref in _references(obj):
            assert ref in rendered, f"{obj['kind']} {obj['metadata']['name']} -> {ref}"
            seen.add(ref[0])
        selector = (obj.get("spec") or {}).get("selector")
        if obj["kind"] in ("Service", "InferencePool"):
            assert any(selector.items() <= p["metadata"]["labels"].items() for p in pools), obj
        if obj["kind"] == "Deployment":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector["matchLabels"].items() <= labels.items()
    assert seen >= {"ServiceAccount", "Secret", "InferencePool", "Role", "Service"}


@pytest.mark.conformance
@SHAPES
def test_long_service_name_renders_objects_the_crds_accept(multinode: bool) -> None:
    for obj in long_named(multinode):
        check(obj)
