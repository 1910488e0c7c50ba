"""Resolution: which presets apply, and how configs merge."""

from __future__ import annotations

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
