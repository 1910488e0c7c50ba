"""The validating admission webhook: an AdmissionReview (admission.k8s.io/v1) in, its
response out, judged by the code `pdserve validate` runs, so that a denial says what
`pdserve validate` would have printed for the same object.

What is checked, on CREATE and UPDATE of an LLMInferenceService or LLMInferenceServiceConfig
of either version:
- the document against the models of its own version, then as v1alpha2 (`loader.parse`):
  unknown fields, types, ranges, URI schemes, required name and model URI;
- for a service, the merge with its configs, its label checks and its templating
  (`resolve.resolve`), when every baseRef names a built-in preset: those are known without
  reading the cluster. A baseRef to any other config is looked up on the cluster by the
  operator when it reconciles, so such a service is judged on its own document only.

Always allowed: DELETE and CONNECT; writes to a subresource (status, written by the
operator); an UPDATE of an object being deleted or that leaves the spec as it was, so that
finalizers and labels can still be changed on an object admitted before this webhook was.
"""

from __future__ import annotations

from typing import Any

from pdserve.api.loader import ManifestError, parse
from pdserve.api.resolve import presets, resolve
from pdserve.api.v1alpha2 import LLMInferenceService
from pdserve.operator.review import (
    ReviewError,
    label,
    one_line,
    request_of,
    uid_of,
    unreadable,
)

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
INVALID = 422  # the API server's code for an object that fails validation
BAD_REVIEW = 400
_OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")


def review_admission(review: Any) -> dict[str, Any]:
    """The AdmissionReview response to `review`; never raises."""
    try:
        request = request_of(review, API_VERSION, KIND)
        problems = judge(request)
    except ReviewError as err:
        return denied(uid_of(review), BAD_REVIEW, str(err))
    except (RecursionError, ValueError) as err:  # nested past what the models go through
        return denied(uid_of(review), BAD_REVIEW, f"request.object: {unreadable(err)}")
    if problems:
        return denied(request["uid"], INVALID, one_line(problems))
    return response(request["uid"], True)


def judge(request: dict[str, Any]) -> list[str]:
    """The problems with the request's object, [] when it is to be allowed."""
    operation = request.get("operation")
    if operation not in _OPERATIONS:
        expected = ", ".join(_OPERATIONS)
        raise ReviewError(f"request.operation: expected one of {expected}, got {operation!r}")
    if operation in ("DELETE", "CONNECT") or request.get("subResource"):
        return []
    obj = request.get("object")
    if operation == "UPDATE" and _unchanged_or_leaving(obj, request.get("oldObject")):
        return []
    namespace = request.get("namespace")
    where = label(obj, "request.object", namespace, request.get("name"))
    return problems(obj, where, namespace if isinstance(namespace, str) else None)


def problems(obj: Any, where: str, namespace: str | None = None) -> list[str]:
    """`pdserve validate`'s lines for one object, `where` in place of the file's name."""
    try:
        doc = parse(obj, where)
        if isinstance(doc, LLMInferenceService) and _presets_only(doc):
            resolve(doc, (), namespace, where)
    except ManifestError as err:
        return err.problems
    return []


def _presets_only(service: LLMInferenceService) -> bool:
    """Every config the service merges is known here, with no cluster read."""
    known = presets()
    return all(ref.name in known for ref in service.spec.base_refs or [])


def _unchanged_or_leaving(obj: Any, old: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    meta = obj.get("metadata")
    if isinstance(meta, dict) and meta.get("deletionTimestamp"):
        return True
    return isinstance(old, dict) and "spec" in obj and old.get("spec") == obj.get("spec")


def response(uid: str, allowed: bool, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if status is not None:
        body["status"] = status
    return {"apiVersion": API_VERSION, "kind": KIND, "response": body}


def denied(uid: str, code: int, message: str) -> dict[str, Any]:
    return response(uid, False, {"code": code, "message": message})
