"""A changed LLMInferenceServiceConfig re-reconciles exactly the services that merge it."""

from __future__ import annotations

import copy
from typing import Any

from opstate import NS, Harness, service

from pdserve.api.resolve import presets
from pdserve.kube import Key
from pdserve.operator.configs import services_referencing

DECODE_PRESET = "kserve-config-llm-decode-template"


def _config(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha2",
        "kind": "LLMInferenceServiceConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _with_refs(name: str, *refs: str, prefill: bool = True) -> dict[str, Any]:
    svc = service(name=name)
    if refs:
        svc["spec"]["baseRefs"] = [{"name": r} for r in refs]
    if not prefill:
        svc["spec"].pop("prefill")
    return svc


def _names(svcs: list[dict[str, Any]]) -> list[str]:
    return [s["metadata"]["name"] for s in svcs]


def test_direct_base_ref() -> None:
    svcs = [_with_refs("a", "big-pool"), _with_refs("b"), _with_refs("c", "other", "big-pool")]
    assert _names(services_referencing("big-pool", svcs, [], NS)) == ["a", "c"]


def test_a_config_serves_only_its_namespace_unless_in_the_system_one() -> None:
    elsewhere = _with_refs("far", "big-pool")
    elsewhere["metadata"]["namespace"] = "team-b"
    svcs = [_with_refs("near", "big-pool"), elsewhere]
    assert _names(services_referencing("big-pool", svcs, [], NS)) == ["near"]
    assert _names(services_referencing("big-pool", svcs, [], "pdserve-system")) == ["near", "far"]


def test_an_overridden_preset_reaches_the_services_that_enable_it() -> None:
    svcs = [_with_refs("pd"), _with_refs("single", prefill=False)]
    assert _names(services_referencing(DECODE_PRESET, svcs, [], "pdserve-system")) == ["pd"]
    assert _names(
        services_referencing("kserve-config-llm-template", svcs, [], "pdserve-system")
    ) == ["single"]
    assert _names(
        services_referencing("kserve-config-llm-scheduler", svcs, [], "pdserve-system")
    ) == [
        "pd",
        "single",
    ]


def test_a_preset_a_base_ref_turns_on_counts() -> None:
    """The config named in baseRefs sets prefill, so the prefill preset applies."""
    svc = _with_refs("via-ref", "adds-prefill", prefill=False)
    adds = _config("adds-prefill", NS, {"prefill": {"replicas": 1}})
    found = services_referencing(
        "kserve-config-llm-prefill-template", [svc], [adds], "pdserve-system"
    )
    assert _names(found) == ["via-ref"]


def test_config_change_reconciles_referencing_services_only() -> None:
    h = Harness(_with_refs("a", "big-pool"))
    b = h.cluster.put(_with_refs("b"))
    h.cluster.put(_config("big-pool", NS, {"replicas": 2}))
    h.reconcile()
    h.reconcile_other(b)
    h.cluster.objects[
        Key("serving.kserve.io/v1alpha2", "LLMInferenceServiceConfig", NS, "big-pool")
    ]["spec"]["replicas"] = 3
    services = h.cluster.list("serving.kserve.io/v1alpha2", "LLMInferenceService")
    configs = h.cluster.list("serving.kserve.io/v1alpha2", "LLMInferenceServiceConfig", NS)
    hit = services_referencing("big-pool", services, configs, NS)
    assert _names(hit) == ["a"]
    h.cluster.log.clear()
    for svc in hit:
        h.reconcile_other(svc)
    assert h.cluster.objects[Key("apps/v1", "Deployment", NS, "a-kserve")]["spec"]["replicas"] == 3
    assert h.cluster.log == [
        ("apply", Key("apps/v1", "Deployment", NS, "a-kserve")),
        ("patch_status", Key.of(hit[0])),  # "0/3 replicas available" now
    ]


def test_a_cluster_copy_of_a_preset_overrides_the_built_in_one() -> None:
    h = Harness(_with_refs("pd"))
    override = copy.deepcopy(presets()[DECODE_PRESET])
    override["metadata"]["namespace"] = "pdserve-system"
    override["spec"]["labels"] = {"tier": "gold"}
    h.cluster.put(override)
    out = h.reconcile()
    decode = h.cluster.objects[Key("apps/v1", "Deployment", NS, "pd-kserve")]
    assert decode["spec"]["template"]["metadata"]["labels"]["tier"] == "gold"
    applied = {c["name"]: c for c in out.status["appliedConfigs"]}
    assert applied[DECODE_PRESET] == {
        "name": DECODE_PRESET,
        "namespace": "pdserve-system",
        "source": "Preset",
    }
