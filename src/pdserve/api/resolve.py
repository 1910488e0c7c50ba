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
from pdserve.api.convert import V1ALPHA2, to_v1alpha2
from pdserve.api.loader import ManifestError, validation_problems
from pdserve.api.merge import merge
from pdserve.api.models import dump
from pdserve.api.template import TemplateError, render_tree
from pdserve.api.v1alpha2 import LLMInferenceService, LLMInferenceServiceConfig, Spec

PREFIX = "kserve-config-llm-"
GLOBAL_CONFIG = {
    "IngressGatewayName": "kserve-ingress-gateway",
    "IngressGatewayNamespace": "kserve",
}


@cache
def presets() -> dict[str, dict[str, Any]]:
    """The built-in well-known configs, by name, in v1alpha2 (some are written in v1alpha1)."""
    out = {}
    for entry in resources.files("pdserve.api.presets").iterdir():
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text())
            if doc["apiVersion"] != V1ALPHA2:
                doc = to_v1alpha2(doc)
            out[doc["metadata"]["name"]] = doc
    return out


# EPP plugin types whose presence in an inline EndpointPickerConfig enables a preset.
LATENCY_PRODUCER = "predicted-latency-producer"
TOKENIZER_PLUGINS = ("token-producer", "precise-prefix-cache-scorer")


def inline_plugin_types(spec: Spec) -> set[str]:
    """The plugin types of the scheduler's inline EndpointPickerConfig: `config.inline`
    (a string or a mapping), else a `--config-text` on the template's `main`, as KServe
    reads it; a config by ConfigMap ref is not read here (nor by KServe at this step).
    A config that does not parse lists no plugins."""
    scheduler = spec.router.scheduler if spec.router is not None else None
    if scheduler is None:
        return set()
    raw: Any = scheduler.config.inline if scheduler.config is not None else None
    if raw is None and scheduler.template is not None:
        for c in dump(scheduler.template).get("containers") or []:
            args = (c.get("command") or []) + (c.get("args") or [])
            if c.get("name") == "main" and "--config-text" in args[:-1]:
                raw = args[args.index("--config-text") + 1]
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError:
            return set()
    if not isinstance(raw, dict) or not isinstance(raw.get("plugins"), list):
        return set()
    return {p["type"] for p in raw["plugins"] if isinstance(p, dict) and "type" in p}


def well_known(spec: Spec) -> list[str]:
    """The presets a spec enables, in merge order: KServe v0.20's scheduler, latency
    predictor, route, tracing, then the workloads, with the tokenizer of KServe's main
    right after the scheduler."""
    names = []
    router = spec.router
    managed = (
        router is not None
        and router.scheduler is not None
        and not (router.scheduler.pool and router.scheduler.pool.ref)
    )
    plugins = inline_plugin_types(spec)
    if managed:
        names.append("scheduler")
    # KServe's main merges it whenever a scheduler is set, pool ref or not; the renderer
    # leaves the Deployment out with a pool ref, as KServe's does.
    if (
        router is not None
        and router.scheduler is not None
        and (router.scheduler.tokenizer is not None or plugins & set(TOKENIZER_PLUGINS))
    ):
        names.append("tokenizer")
    if LATENCY_PRODUCER in plugins:
        names.append("scheduler-latency-predictor")
    if (
        router is not None
        and router.route is not None
        and not (router.route.http and router.route.http.refs)
    ):
        names.append("router-route")
    if spec.tracing is not None:
        names.append("tracing")
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


# Keys of the pods' labels a user label may not replace, and why. The pool keys are left
# out: a service without an InferencePool of its own may set them to another service's
# (KServe's multi-GPU-vendor pattern), so that the other's pool selects its pods too.
_WORKLOAD_KEYS = {
    wire.ROLE_LABEL: "the endpoint picker tells prefill from decode pods by it",
    wire.COMPONENT_LABEL: "it tells a service's workload, prefill and scheduler pods apart",
}
_POOL_KEYS = (wire.NAME_LABEL, wire.PART_OF_LABEL, wire.KSERVE_COMPONENT_LABEL)


def _has_own_pool(spec: dict[str, Any]) -> bool:
    """The service renders an InferencePool (a managed scheduler not pointed at another's)."""
    scheduler = (spec.get("router") or {}).get("scheduler")
    return scheduler is not None and not (scheduler.get("pool") or {}).get("ref")


def _workload_label_problem(key: str, own_pool: bool) -> str | None:
    if key in _WORKLOAD_KEYS:
        return f"cannot override a selector label ({_WORKLOAD_KEYS[key]})"
    if key in _POOL_KEYS and own_pool:
        return (
            "cannot override a selector label (the service's own InferencePool selects its "
            "pods by it; only a service without a scheduler may set it, to join another's pool)"
        )
    return None


def _scheduler_label_problem(key: str) -> str | None:
    if key in (wire.COMPONENT_LABEL, wire.NAME_LABEL, wire.PART_OF_LABEL):
        return "cannot override a selector label (the scheduler's Service selects its pods by it)"
    if key in wire.SELECTOR_LABELS:
        return "cannot override a selector label (scheduler pods must not pass for workload pods)"
    return None


def _check_labels(spec: dict[str, Any], where: str) -> None:
    """Reject a user label that would break a selector of the service's own, before anything
    is rendered: pods out of their own InferencePool, decode pods passing for prefill ones,
    scheduler pods out of their Service or inside the pool. The renderer lets user labels
    win on the pods and selects each Deployment's pods by what they end up carrying, as
    KServe does, so any other label is safe."""
    own_pool = _has_own_pool(spec)
    workloads = [
        ("spec.labels", spec.get("labels")),
        ("spec.prefill.labels", (spec.get("prefill") or {}).get("labels")),
    ]
    problems = [
        f"{where}: {path}.{key}: {problem}"
        for path, labels in workloads
        for key in labels or {}
        if (problem := _workload_label_problem(key, own_pool)) is not None
    ]
    sched = ((spec.get("router") or {}).get("scheduler")) or {}
    problems += [
        f"{where}: spec.router.scheduler.labels.{key}: {problem}"
        for key in sched.get("labels") or {}
        if (problem := _scheduler_label_problem(key)) is not None
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
    for doc in [by_name.get(n) or presets()[n] for n in well_known(enabled)] + refs:
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
        resolved = LLMInferenceService.model_validate(merged)
    except ValidationError as err:
        raise ManifestError(validation_problems(f"{where} (after merging configs)", err)) from None
    return resolved.as_written(service.written_as)


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
