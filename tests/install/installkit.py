"""Checks shared by the install tests: objects against Kubernetes 1.33's schemas, or, for
our own kinds, against the CRD schemas pdserve generates."""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate

from pdserve.install import crd

OWN_KINDS = (crd.models.SERVICE_KIND, crd.models.CONFIG_KIND)


@cache
def own_validator(kind: str, version: str) -> Any:
    schema = crd.version_schema(kind, version)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def own_errors(doc: dict[str, Any]) -> list[str]:
    """What our generated CRD schema finds wrong with an LLMInferenceService(Config)."""
    group, version = doc["apiVersion"].split("/")
    assert group == crd.GROUP, doc["apiVersion"]
    errors = own_validator(doc["kind"], version).iter_errors(doc)
    return [f"{e.json_path}: {e.message}" for e in errors]


def check_object(obj: dict[str, Any]) -> None:
    """Kubernetes 1.33 strict for built-in kinds; our CRD schema for our own."""
    if obj["kind"] in OWN_KINDS:
        assert own_errors(obj) == [], obj["metadata"]["name"]
    else:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
