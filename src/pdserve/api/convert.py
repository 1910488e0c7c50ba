"""v1alpha1 <-> v1alpha2 conversion of LLMInferenceService and LLMInferenceServiceConfig,
by KServe v0.20's rules (its v1alpha1 ConvertTo/ConvertFrom, v1alpha2 being the hub).

Pure functions over the documents as a user writes them (camelCase, validated first). The
one field v1alpha2 lacks, `model.criticality` (and each LoRA adapter's), travels in
annotations so that v1alpha1 -> v1alpha2 -> v1alpha1 is lossless. The other way is not:
what only v1alpha2 has (kvCacheOffloading, model.confidential, the pool's appProtocol)
is dropped, as KServe drops it, and named in `Converted.dropped` so a person is told.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

V1ALPHA1 = "serving.kserve.io/v1alpha1"
V1ALPHA2 = "serving.kserve.io/v1alpha2"
VERSIONS = (V1ALPHA1, V1ALPHA2)
MODEL_CRITICALITY = "internal.serving.kserve.io/model-criticality"
LORA_CRITICALITIES = "internal.serving.kserve.io/lora-criticalities"
# Defaults the GA InferencePool API server applies, and GIE's conversion assumes.
EPP_KIND, EPP_PORT, EPP_FAILURE_MODE = "Service", 9002, "FailClose"
_STATUS = ("url", "observedGeneration", "conditions", "annotations", "address")
_CONFIG_STATUS = ("observedGeneration", "conditions", "annotations")


@dataclass(frozen=True)
class Converted:
    doc: dict[str, Any]
    dropped: list[str] = field(default_factory=list)


def convert(doc: dict[str, Any], api_version: str) -> Converted:
    """`doc` in `api_version`; a document already there comes back unchanged."""
    if doc.get("apiVersion") == api_version:
        return Converted(copy.deepcopy(doc))
    if api_version == V1ALPHA2:
        return Converted(to_v1alpha2(doc))
    return to_v1alpha1(doc)


# --- v1alpha1 -> v1alpha2 --------------------------------------------------------------------
def to_v1alpha2(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["apiVersion"] = V1ALPHA2
    spec = out.get("spec") or {}
    _save_criticality(out.setdefault("metadata", {}), spec.get("model") or {})
    pool = ((spec.get("router") or {}).get("scheduler") or {}).get("pool") or {}
    if pool.get("spec") is not None:
        pool["spec"] = pool_spec_to_ga(pool["spec"])
    _status(out, dict)
    return out


def _save_criticality(meta: dict[str, Any], model: dict[str, Any]) -> None:
    """Move criticalities into annotations (LoRA's as JSON by adapter index, as Go writes
    a map[int]string: keys as strings, sorted as strings, no spaces)."""
    notes = meta.get("annotations") or {}
    if model.get("criticality"):
        notes[MODEL_CRITICALITY] = model["criticality"]
    model.pop("criticality", None)
    adapters = (model.get("lora") or {}).get("adapters") or []
    lora = {str(i): a["criticality"] for i, a in enumerate(adapters) if a.get("criticality")}
    for adapter in adapters:
        adapter.pop("criticality", None)
    if lora:
        notes[LORA_CRITICALITIES] = json.dumps(dict(sorted(lora.items())), separators=(",", ":"))
    if notes:
        meta["annotations"] = notes


def pool_spec_to_ga(spec: dict[str, Any]) -> dict[str, Any]:
    """An x-k8s.io v1alpha2 InferencePool spec as GA v1, by GIE's conversion."""
    ext = spec.get("extensionRef") or {}
    ref: dict[str, Any] = {}
    if "group" in ext:
        ref["group"] = ext["group"]
    ref["kind"] = ext.get("kind") or EPP_KIND
    ref["name"] = ext.get("name", "")
    if ext.get("portNumber"):
        ref["port"] = {"number": ext["portNumber"]}
    elif ref["kind"] == EPP_KIND:
        ref["port"] = {"number": EPP_PORT}
    ref["failureMode"] = ext.get("failureMode") or EPP_FAILURE_MODE
    return {
        "selector": {"matchLabels": dict(spec.get("selector") or {})},
        "targetPorts": [{"number": spec.get("targetPortNumber", 0)}],
        "endpointPickerRef": ref,
    }


# --- v1alpha2 -> v1alpha1 --------------------------------------------------------------------
def to_v1alpha1(doc: dict[str, Any]) -> Converted:
    out = copy.deepcopy(doc)
    out["apiVersion"] = V1ALPHA1
    spec = out.get("spec") or {}
    dropped = _drop_v1alpha2_only(spec)
    pool = ((spec.get("router") or {}).get("scheduler") or {}).get("pool") or {}
    if pool.get("spec") is not None:
        if "appProtocol" in pool["spec"]:
            dropped.append("spec.router.scheduler.pool.spec.appProtocol")
        pool["spec"] = pool_spec_from_ga(pool["spec"])
    _restore_criticality(out.setdefault("metadata", {}), spec.get("model") or {})
    _status(out, lambda a: {k: v for k, v in a.items() if k not in ("origin", "models")})
    return Converted(out, dropped)


def _drop_v1alpha2_only(spec: dict[str, Any]) -> list[str]:
    dropped = []
    for path, holder in (("spec", spec), ("spec.prefill", spec.get("prefill") or {})):
        if holder.pop("kvCacheOffloading", None) is not None:
            dropped.append(f"{path}.kvCacheOffloading")
    model = spec.get("model") or {}
    if model.pop("confidential", None) is not None:
        dropped.append("spec.model.confidential")
    for i, adapter in enumerate((model.get("lora") or {}).get("adapters") or []):
        if adapter.pop("confidential", None) is not None:
            dropped.append(f"spec.model.lora.adapters[{i}].confidential")
    return dropped


def pool_spec_from_ga(spec: dict[str, Any]) -> dict[str, Any]:
    """A GA v1 InferencePool spec as x-k8s.io v1alpha2, by GIE's conversion (the first
    target port; the API server's defaults where the spec leaves kind or mode out)."""
    ref = spec.get("endpointPickerRef") or {}
    ext: dict[str, Any] = {}
    if "group" in ref:
        ext["group"] = ref["group"]
    ext["kind"] = ref.get("kind") or EPP_KIND
    ext["name"] = ref.get("name", "")
    if ref.get("port"):
        ext["portNumber"] = ref["port"]["number"]
    ext["failureMode"] = ref.get("failureMode") or EPP_FAILURE_MODE
    out: dict[str, Any] = {}
    labels = (spec.get("selector") or {}).get("matchLabels")
    if labels is not None:
        out["selector"] = dict(labels)
    out["targetPortNumber"] = (spec.get("targetPorts") or [{}])[0].get("number", 0)
    out["extensionRef"] = ext
    return out


def _restore_criticality(meta: dict[str, Any], model: dict[str, Any]) -> None:
    """Criticalities back from the annotations, which are then removed (an empty one is
    left where it is, as KServe's does)."""
    notes = meta.get("annotations")
    if notes is None:
        return
    if notes.get(MODEL_CRITICALITY):
        model["criticality"] = notes.pop(MODEL_CRITICALITY)
    if notes.get(LORA_CRITICALITIES):
        lora = _lora_criticalities(notes.pop(LORA_CRITICALITIES))
        for i, adapter in enumerate((model.get("lora") or {}).get("adapters") or []):
            if i in lora:
                adapter["criticality"] = lora[i]
    if not notes:
        meta.pop("annotations")


def _lora_criticalities(raw: str) -> dict[int, str]:
    """The annotation's map; unreadable JSON restores nothing, as KServe's does."""
    try:
        data = json.loads(raw)
        return {int(k): str(v) for k, v in data.items()}
    except (ValueError, AttributeError):
        return {}


# --- status ----------------------------------------------------------------------------------
Address = Callable[[dict[str, Any]], dict[str, Any]]


def _status(doc: dict[str, Any], address: Address) -> None:
    """Status keeps only what both versions have (the controller re-derives the rest):
    a service's url, conditions and addresses, a config's conditions."""
    status = doc.get("status")
    if status is None:
        return
    keep = _STATUS if doc.get("kind") == "LLMInferenceService" else _CONFIG_STATUS
    out = {k: status[k] for k in keep if k in status}
    if "addresses" in status and doc.get("kind") == "LLMInferenceService":
        out["addresses"] = [address(a) for a in status["addresses"]]
    doc["status"] = out
