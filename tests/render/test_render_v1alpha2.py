"""A manifest written in v1alpha2 renders what KServe v0.20 does: the GA InferencePool, no
InferenceModel, the route's backend in the GA group; the same in v1alpha1 renders v0.16's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from schemas import check

from pdserve import api, render, wire

DATA = Path(__file__).parent / "data"
V2 = DATA / "pd-cpu-v1alpha2.yaml"


def _render(path: Path) -> list[dict[str, Any]]:
    [service] = api.resolve_file(str(path))
    return render.render(service, certs=("crt", "key"))


def _kinds(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def test_v1alpha2_renders_the_ga_pool() -> None:
    objs = _kinds(_render(V2))
    pool = objs["InferencePool"]
    assert pool["apiVersion"] == f"{wire.POOL_GROUP_GA}/{wire.POOL_VERSION_GA}"
    assert pool["metadata"]["name"] == "opt-pd-inference-pool"
    assert pool["spec"] == {
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "opt-pd",
                "app.kubernetes.io/part-of": "llminferenceservice",
                "kserve.io/component": "workload",
            }
        },
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {
            "kind": "Service",
            "name": "opt-pd-epp-service",
            "port": {"number": 9002},
            "failureMode": "FailOpen",
        },
    }
    assert "InferenceModel" not in objs
    backends = [b for r in objs["HTTPRoute"]["spec"]["rules"] for b in r["backendRefs"]]
    assert {b["group"] for b in backends if b["kind"] == "InferencePool"} == {wire.POOL_GROUP_GA}


def test_v1alpha1_still_renders_the_x_k8s_pool() -> None:
    objs = _kinds(_render(DATA / "pd-cpu.yaml"))
    assert objs["InferencePool"]["apiVersion"] == f"{wire.POOL_GROUP}/{wire.POOL_VERSION}"
    assert objs["InferenceModel"]["spec"]["poolRef"]["group"] == wire.POOL_GROUP


def test_both_versions_render_the_same_workloads() -> None:
    """Apart from the pool's API, the version a manifest is written in changes nothing."""

    def workloads(path: Path) -> list[dict[str, Any]]:
        return [
            o
            for o in _render(path)
            if o["kind"] not in ("InferencePool", "InferenceModel", "HTTPRoute")
        ]

    assert workloads(V2) == workloads(DATA / "pd-cpu.yaml")


def test_criticality_from_v1alpha1_reaches_the_inference_model(tmp_path: Path) -> None:
    text = (
        (DATA / "pd-cpu.yaml")
        .read_text()
        .replace("    name: opt\n", "    name: opt\n    criticality: Sheddable\n")
    )
    path = tmp_path / "svc.yaml"
    path.write_text(text)
    assert _kinds(_render(path))["InferenceModel"]["spec"]["criticality"] == "Sheddable"


def test_explain_and_validate_take_v1alpha2(capsys: pytest.CaptureFixture[str]) -> None:
    from pdserve.cli import main

    assert main(["validate", str(V2)]) == 0
    assert main(["explain", str(V2)]) == 0
    assert "prefill/decode disaggregated" in capsys.readouterr().out


@pytest.mark.conformance
def test_v1alpha2_render_satisfies_the_crds() -> None:
    """Reads crds/inference.networking.k8s.io_inferencepools.yaml (the GA pool), the Gateway
    API and KServe v0.20 CRDs."""
    [service] = api.resolve_file(str(V2))
    for obj in render.render(service, certs=("crt", "key")):
        check(obj)
    check(api.dump(service))


def test_the_ga_pool_spec_is_the_v1alpha2_one_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    """One spec, converted by the API's pool conversion: the two pools cannot drift apart."""
    from pdserve.api.convert import pool_spec_to_ga
    from pdserve.render import router

    v1alpha2 = router.inference_pool("opt-pd", "ns")["spec"]
    assert router.inference_pool("opt-pd", "ns", ga=True)["spec"] == pool_spec_to_ga(v1alpha2)
    monkeypatch.setattr(router, "pool_spec_to_ga", lambda spec: {"converted": spec})
    assert router.inference_pool("opt-pd", "ns", ga=True)["spec"] == {"converted": v1alpha2}
