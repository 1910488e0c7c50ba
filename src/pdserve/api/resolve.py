"""From a service and its configs to the merged spec the workloads are rendered from.

Order, later wins: the well-known presets the spec enables (judged on the service merged
with its baseRefs, as KServe does), the user's baseRefs in order, then the service itself;
each step a strategic merge; then templating with missing keys as errors. Configs are
looked up by name among the documents given (same file, --config-dir), then among the
built-in presets, as KServe looks in the service's namespace, then the system namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError

from pdserve import wire
from pdserve.api.loader import ManifestError, validation_problems
from pdserve.api.merge import merge
from pdserve.api.models import LLMInferenceService, LLMInferenceServiceConfig, Spec, dump
from pdserve.api.template import TemplateError, render_tree

PREFIX = "kserve-config-llm-"
GLOBAL_CONFIG = {
    "IngressGatewayName": "kserve-ingress-gateway",
    "IngressGatewayNamespace": "kserve",
}


@cache
def presets() -> dict[str, dict[str, Any]]:
    """The built-in well-known configs, by name."""
    out = {}
    for entry in resources.files("pdserve.api.presets").iterdir():
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text())
            out[doc["metadata"]["name"]] = doc
    return out


def well_known(spec: Spec) -> list[str]:
    """The presets a spec enables, in merge order."""
    names = []
    router = spec.router
    if (
        router is not None
        and router.scheduler is not None
        and not (router.scheduler.pool and router.scheduler.pool.ref)
    ):
        names.append("scheduler")
    if (
        router is not None
        and router.route is not None
        and not (router.route.http and router.route.http.refs)
    ):
        names.append("router-route")
    if spec.prefill is not None:
        names.append("prefill-worker-data-parallel" if spec.prefill.worker else "prefill-template")
        names.append("decode-worker-data-parallel" if spec.worker else "decode-template")
    else:
        names.append("worker-data-parallel" if spec.worker else "template")
    return [PREFIX + n for n in names]


def _config(ref_name: str, i: int, by_name: dict[str | None, Any], where: str) -> dict[str, Any]:
    """A baseRef's config: the documents given first, then the built-in presets."""
    doc = by_name.get(ref_name) or presets().get(ref_name)
    if doc is None:
        raise ManifestError(
            [f"{where}: spec.baseRefs[{i}].name: LLMInferenceServiceConfig {ref_name!r} not found"]
        )
    return doc


def _enabled(spec: dict[str, Any], refs: list[dict[str, Any]], where: str) -> Spec:
    """What the service turns on once its baseRefs are in: a config may be the one that
    sets `prefill` or `router.scheduler`, and then its presets must apply too. KServe
    merges the baseRefs over the service's spec for this decision, before any preset."""
    for doc in refs:
        spec = merge(spec, doc.get("spec") or {})
    try:
        return Spec.model_validate(spec)
    except ValidationError as err:
        raise ManifestError(
            validation_problems(f"{where} (after merging configs)", err, under="spec")
        ) from None


def _check_labels(spec: dict[str, Any], where: str) -> None:
    """A user label over a key the pods are selected by would leave a Deployment whose
    selector does not match its own pod template (the API server rejects it), or move
    pods in or out of the InferencePool; say which label, before anything is rendered."""
    sched = ((spec.get("router") or {}).get("scheduler")) or {}
    places = [
        ("spec.labels", spec.get("labels")),
        ("spec.prefill.labels", (spec.get("prefill") or {}).get("labels")),
        ("spec.router.scheduler.labels", sched.get("labels")),
    ]
    problems = [
        f"{where}: {path}.{key}: cannot override a selector label"
        for path, labels in places
        for key in labels or {}
        if key in wire.SELECTOR_LABELS
    ]
    if problems:
        raise ManifestError(problems)


def resolve(
    service: LLMInferenceService,
    configs: Iterable[Any] = (),
    namespace: str | None = None,
    where: str | None = None,
) -> LLMInferenceService:
    """The merged, templated service; problems are reported against `where` (its file)."""
    where = where or service.name
    by_name = {
        c.metadata.name: dump(c) for c in configs if isinstance(c, LLMInferenceServiceConfig)
    }
    obj = dump(service)
    refs = [_config(r.name, i, by_name, where) for i, r in enumerate(service.spec.base_refs or [])]
    enabled = _enabled(obj["spec"], refs, where)
    spec: dict[str, Any] = {}
    for doc in [presets()[n] for n in well_known(enabled)] + refs:
        spec = merge(spec, doc.get("spec") or {})
    spec = merge(spec, obj["spec"])
    spec.pop("baseRefs", None)
    _check_labels(spec, where)
    meta = dict(obj["metadata"])
    meta["namespace"] = namespace or meta.get("namespace") or "default"
    spec.setdefault("model", {}).setdefault("name", meta["name"])
    data = {"ObjectMeta": meta, "Spec": spec, "GlobalConfig": GLOBAL_CONFIG}
    try:
        spec = render_tree(spec, data, "spec")
    except TemplateError as err:
        raise ManifestError([f"{where}: {err}"]) from None
    merged = {**obj, "metadata": meta, "spec": spec}
    try:
        return LLMInferenceService.model_validate(merged)
    except ValidationError as err:
        raise ManifestError(validation_problems(f"{where} (after merging configs)", err)) from None


def resolve_file(
    path: str, config_dir: str | None = None, namespace: str | None = None
) -> list[LLMInferenceService]:
    from pdserve.api.loader import load

    docs = load(path, config_dir)
    configs = [d for d in docs if isinstance(d, LLMInferenceServiceConfig)]
    services = [d for d in docs if isinstance(d, LLMInferenceService)]
    if not services:
        raise ManifestError([f"{path}: no LLMInferenceService in the file"])
    return [resolve(s, configs, namespace, path) for s in services]
