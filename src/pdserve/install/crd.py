"""The CustomResourceDefinitions of LLMInferenceService and LLMInferenceServiceConfig,
generated from the API models (`api/models.py` for v1alpha1, `api/v1alpha2.py` for v1alpha2)
so that the cluster checks what `pdserve validate` checks, as far as a schema can.

Pydantic's JSON Schema becomes a structural OpenAPI v3 schema, as Kubernetes requires:
`$ref`s inlined, `X | None` as `nullable` (but for enums: the API server drops a null of a
non-nullable field, where a kept null would fail the enum), `int | str` as
`x-kubernetes-int-or-string`, free-form dicts and the pass-through parts of the pod
template (`models.Open`) as `x-kubernetes-preserve-unknown-fields`, bounds, patterns and
enums kept. Our strict structures set no `additionalProperties` (Kubernetes forbids
`false`): the API server prunes unknown fields, and rejects them under strict field
validation (kubectl's default). Cross-field rules (`replicas` or `scaling`, one WVA
actuator, selector labels, a model's URI scheme) stay with the validating webhook.

`json_schema` turns a version's structural schema back into plain JSON Schema (nullable as a
type list, unknown fields of strict objects rejected), for checking manifests offline.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from pdserve.api import models, v1alpha2

GROUP = "serving.kserve.io"
SERVICE_PLURAL = "llminferenceservices"
CONFIG_PLURAL = "llminferenceserviceconfigs"
STORAGE_VERSION = "v1alpha2"
# The operator's webhook: conversion, validation, on one Service.
NAMESPACE = "pdserve-system"
WEBHOOK_SERVICE = "pdserve-webhook"
CONVERT_PATH = "/convert"
WEBHOOK_PORT = 443

Schema = dict[str, Any]
VERSIONS: dict[str, dict[str, type[BaseModel]]] = {
    "v1alpha1": {
        models.SERVICE_KIND: models.LLMInferenceService,
        models.CONFIG_KIND: models.LLMInferenceServiceConfig,
    },
    "v1alpha2": {
        models.SERVICE_KIND: v1alpha2.LLMInferenceService,
        models.CONFIG_KIND: v1alpha2.LLMInferenceServiceConfig,
    },
}
# Names as KServe's CRDs have them (v0.20): only the service has a short name.
NAMES: dict[str, dict[str, Any]] = {
    models.SERVICE_KIND: {
        "kind": models.SERVICE_KIND,
        "listKind": f"{models.SERVICE_KIND}List",
        "plural": SERVICE_PLURAL,
        "shortNames": ["llmisvc"],
        "singular": "llminferenceservice",
    },
    models.CONFIG_KIND: {
        "kind": models.CONFIG_KIND,
        "listKind": f"{models.CONFIG_KIND}List",
        "plural": CONFIG_PLURAL,
        "singular": "llminferenceserviceconfig",
    },
}
_READY = ".status.conditions[?(@.type=='Ready')]"
_COMMON_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
COLUMNS: dict[str, list[dict[str, Any]]] = {
    models.SERVICE_KIND: [
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        *_COMMON_COLUMNS,
        {"name": "URLs", "type": "string", "jsonPath": ".status.addresses[*].url", "priority": 1},
    ],
    models.CONFIG_KIND: _COMMON_COLUMNS,
}
# JSON Schema words a structural schema keeps as they are.
_KEPT = (
    "description",
    "enum",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "required",
)
_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_INT_OR_STRING = "x-kubernetes-int-or-string"


def _deref(node: Schema, defs: dict[str, Schema]) -> Schema:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = dict(defs[ref.rsplit("/", 1)[-1]])
    target.update({k: v for k, v in node.items() if k != "$ref"})
    return _deref(target, defs)


def structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """One pydantic JSON Schema node as a structural OpenAPI v3 node."""
    node = _deref(node, defs)
    out: Schema = {}
    if "anyOf" in node:
        branches = [_deref(b, defs) for b in node["anyOf"]]
        nullable = any(b.get("type") == "null" for b in branches)
        branches = [b for b in branches if b.get("type") != "null"]
        if len(branches) == 1:
            inner = {**{k: v for k, v in node.items() if k != "anyOf"}, **branches[0]}
            out = structural(inner, defs)
        elif sorted(b.get("type", "") for b in branches) == ["integer", "string"]:
            out = {"anyOf": [{"type": "integer"}, {"type": "string"}], _INT_OR_STRING: True}
            for b in branches:  # a Quantity's pattern, say: on the node, as Kubernetes has it
                out.update({k: v for k, v in b.items() if k in _KEPT})
        else:  # any other union (a string or an object): the schema lets it through
            out = {_PRESERVE: True}
        if "description" in node:
            out["description"] = node["description"]
        # An enum stays non-nullable: the API server drops a null of a non-nullable field
        # (so `null` still means absent), where a kept null would fail the enum.
        if nullable and "enum" not in out:
            out["nullable"] = True
        return out
    if "const" in node:
        out["enum"] = [node["const"]]
    kind = node.get("type")
    if kind is not None:
        out["type"] = kind
    out.update({k: v for k, v in node.items() if k in _KEPT})
    if kind == "array":
        out["items"] = structural(node.get("items", {}), defs)
    elif kind == "object":
        extra = node.get("additionalProperties")
        if "properties" in node:
            out["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
            if extra is True:  # models.Open: the fields we type, the rest round-trips
                out[_PRESERVE] = True
        elif isinstance(extra, dict) and extra:  # dict[str, X]
            out["additionalProperties"] = structural(extra, defs)
        elif extra is not False:  # dict[str, Any]
            out[_PRESERVE] = True
    elif kind is None and not out.get("enum"):
        out[_PRESERVE] = True  # Any
    return out


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The openAPIV3Schema of one kind and version: its spec from the model."""
    source = model.model_json_schema(by_alias=True)
    spec = structural(source["properties"]["spec"], source.get("$defs", {}))
    spec.pop("description", None)
    return {
        "description": f"{model.__name__}, generated by pdserve from its API models.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": {"type": "object", _PRESERVE: True},
        },
    }


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of `kind`: both versions served, v1alpha2 stored, and
    converted by the operator's webhook."""
    plural = NAMES[kind]["plural"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "pdserve"},
        },
        "spec": {
            "group": GROUP,
            "names": NAMES[kind],
            "scope": "Namespaced",
            "conversion": {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {
                        "service": {
                            "name": WEBHOOK_SERVICE,
                            "namespace": NAMESPACE,
                            "path": CONVERT_PATH,
                            "port": WEBHOOK_PORT,
                        }
                    },
                    "conversionReviewVersions": ["v1"],
                },
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": version == STORAGE_VERSION,
                    "schema": {"openAPIV3Schema": openapi_schema(kinds[kind])},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": COLUMNS[kind],
                }
                for version, kinds in VERSIONS.items()
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """Both CRDs, the service's first."""
    return [crd(models.SERVICE_KIND), crd(models.CONFIG_KIND)]


def json_schema(structural_schema: Schema) -> Schema:
    """A structural schema as plain JSON Schema: `nullable` as a type list, the unknown
    fields of an object without `x-kubernetes-preserve-unknown-fields` rejected (as strict
    field validation does), `x-kubernetes-int-or-string` as integer or string."""

    def convert(node: Schema) -> Schema:
        out = copy.copy(node)
        if "properties" in out:
            out["properties"] = {k: convert(v) for k, v in out["properties"].items()}
            if not out.get(_PRESERVE):
                out["additionalProperties"] = False
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = convert(out["additionalProperties"])
        if "items" in out:
            out["items"] = convert(out["items"])
        if out.get(_INT_OR_STRING) and "type" not in out:
            out["type"] = ["integer", "string"]
            out.pop("anyOf", None)
        if out.pop("nullable", False) and "type" in out:
            kind = out["type"]
            out["type"] = [*kind, "null"] if isinstance(kind, list) else [kind, "null"]
        return out

    return convert(structural_schema)


def version_schema(kind: str, version: str) -> Schema:
    """`kind`'s schema in `version` as plain JSON Schema (see `json_schema`)."""
    return json_schema(openapi_schema(VERSIONS[version][kind]))
