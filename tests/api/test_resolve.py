"""Resolution: which presets apply, and how configs merge."""

from __future__ import annotations

from pathlib import Path

from pdserve import api, render
from pdserve.api.merge import merge

PD_BASE_REF = """\
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceServiceConfig
metadata:
  name: my-pd
spec:
  prefill:
    replicas: 1
  router:
    scheduler: {}
    route: {}
---
apiVersion: serving.kserve.io/v1alpha1
kind: LLMInferenceService
metadata:
  name: svc
spec:
  model:
    uri: hf://org/model
  replicas: 1
  baseRefs:
    - name: my-pd
"""


def test_base_ref_that_enables_pd_and_router_switches_on_their_presets(tmp_path) -> None:
    """KServe picks the well-known presets from the spec merged with its baseRefs."""
    path = tmp_path / "svc.yaml"
    path.write_text(PD_BASE_REF)
    [service] = api.resolve_file(str(path))
    objs = {(o["kind"], o["metadata"]["name"]): o for o in render.render(service)}
    prefill = objs[("Deployment", "svc-kserve-prefill")]["spec"]["template"]["spec"]
    assert [c["name"] for c in prefill["containers"]] == ["main"]
    epp = objs[("Deployment", "svc-kserve-router-scheduler")]["spec"]["template"]["spec"]
    assert [c["name"] for c in epp["containers"]] == ["main"]
    assert ("HTTPRoute", "svc-kserve-route") in objs
    decode = objs[("Deployment", "svc-kserve")]["spec"]["template"]["spec"]
    assert [c["name"] for c in decode.get("initContainers") or []][-1:] == ["llm-d-routing-sidecar"]


def test_tolerations_are_replaced_not_merged_by_key() -> None:
    """PodSpec.tolerations has no patch merge key: a strategic merge replaces the list."""
    base = {
        "template": {
            "tolerations": [
                {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Exists"},
            ]
        }
    }
    overlay = {"template": {"tolerations": [{"key": "gpu", "operator": "Equal", "value": "a"}]}}
    merged = merge(base, overlay)
    assert merged["template"]["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "a"}]


def test_volume_mounts_merge_on_mount_path_as_kubernetes_does() -> None:
    """One volume mounted at two paths is two mounts; the same path is one, overlaid."""
    base = {"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    overlay = {
        "volumeMounts": [
            {"name": "cache", "mountPath": "/models", "readOnly": True},
            {"name": "other", "mountPath": "/cache"},
        ]
    }
    assert merge(base, overlay)["volumeMounts"] == [
        {"name": "other", "mountPath": "/cache"},
        {"name": "cache", "mountPath": "/models", "readOnly": True},
    ]


def test_tracing_preset_fills_what_the_service_leaves_out(tmp_path: Path) -> None:
    """Selected by `tracing` being set, in either version; the service's own fields win."""
    text = (
        "apiVersion: serving.kserve.io/v1alpha2\nkind: LLMInferenceService\n"
        "metadata: {name: t}\nspec:\n  model: {uri: hf://org/m}\n"
        "  tracing: {samplerArg: '1.0'}\n"
    )
    path = tmp_path / "t.yaml"
    path.write_text(text)
    [service] = api.resolve_file(str(path))
    assert service.spec.tracing is not None
    assert api.dump(service)["spec"]["tracing"] == {
        "exporterEndpoint": "http://localhost:4317",
        "sampler": "parentbased_traceidratio",
        "samplerArg": "1.0",
        "exporter": "otlp",
    }
    path.write_text(text.replace("  tracing: {samplerArg: '1.0'}\n", ""))
    [untraced] = api.resolve_file(str(path))
    assert untraced.spec.tracing is None


def test_configs_of_either_version_serve_a_service_of_the_other(tmp_path: Path) -> None:
    """Configs are merged in v1alpha2 whatever they were written in; the service's own
    version still decides the pool it renders."""
    text = (
        "apiVersion: serving.kserve.io/v1alpha1\nkind: LLMInferenceService\n"
        "metadata: {name: s}\nspec:\n  model: {uri: hf://org/m}\n  baseRefs: [{name: c}]\n"
        "---\napiVersion: serving.kserve.io/v1alpha2\nkind: LLMInferenceServiceConfig\n"
        "metadata: {name: c}\nspec:\n  router: {scheduler: {}}\n"
        "  kvCacheOffloading: {cpu: 1Gi}\n"
    )
    path = tmp_path / "s.yaml"
    path.write_text(text)
    [service] = api.resolve_file(str(path))
    assert service.spec.kv_cache_offloading is not None
    kinds = {o["kind"]: o for o in render.render(service)}
    assert kinds["InferencePool"]["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
