"""Schema checks for rendered objects.

Core kinds are checked against the Kubernetes schemas bundled with kubernetes-validate, so
core tests can use `check_core` anywhere. The CRD kinds (InferencePool, HTTPRoute,
LeaderWorkerSet, LLMInferenceService...) need the upstream CRDs in ../shared/reference:
only `conformance` tests may call `check`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from testkit import REFERENCE

CORE = {
    "Deployment",
    "Service",
    "Secret",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "HorizontalPodAutoscaler",
    "PersistentVolumeClaim",
    "Job",
}
# Later folders win: KServe v0.20's LLMInferenceService CRD knows the fields added since
# v0.16 (spec.labels, scaling...), which the v0.16 one would let through unchecked.
CRD_FOLDERS = ("crds", "kserve-v0.20/crds")


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for folder in CRD_FOLDERS:
        for path in sorted((REFERENCE / folder).glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                out[(f"{group}/{version['name']}", kind)] = schema
    return out


def check_core(obj: dict[str, Any]) -> bool:
    """Validate a core object strictly; False when `obj` is not a core kind."""
    if obj["kind"] not in CORE:
        return False
    kubernetes_validate.validate(obj, "1.33.0", strict=True)
    return True


@cache
def _validator(api_version: str, kind: str) -> Any:
    """One validator per CRD version: `jsonschema.validate` checks the (megabytes of) schema
    itself on every call, which cost most of these tests' time."""
    if (api_version, kind) == ("keda.sh/v1alpha1", "ScaledObject"):
        from keda_schema import SCALED_OBJECT  # no KEDA CRD upstream here: ours, any test

        schema: dict[str, Any] | None = SCALED_OBJECT
    else:
        schema = crd_schemas().get((api_version, kind))
    assert schema is not None, f"no CRD for {api_version} {kind}"
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def check(obj: dict[str, Any]) -> None:
    """Validate any rendered object (or an LLMInferenceService), CRD kinds included."""
    if check_core(obj):
        return
    error = jsonschema.exceptions.best_match(
        _validator(obj["apiVersion"], obj["kind"]).iter_errors(obj)
    )
    if error is not None:
        raise error
