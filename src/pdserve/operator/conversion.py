"""The CRDs' conversion webhook: a ConversionReview (apiextensions.k8s.io/v1) in, its
response out, each object converted by the code `pdserve convert` runs (api/convert.py),
checked before and after as `pdserve convert` checks it.

The object itself is converted, not its dump: metadata comes back as it was (uid,
resourceVersion, managedFields and all) but for the criticality annotations the
conversion adds or removes, and status is kept as convert keeps it. What only v1alpha2 has
is dropped going down, as KServe drops it; `convert_review` names those fields so that the
server can log them. Any object that fails fails the whole review (the API server takes
all or nothing), with one line naming it.
"""

from __future__ import annotations

from typing import Any

from pdserve.api.convert import VERSIONS, convert
from pdserve.api.loader import ManifestError, check
from pdserve.operator.review import (
    ReviewError,
    label,
    one_line,
    request_of,
    uid_of,
    unreadable,
)

API_VERSION = "apiextensions.k8s.io/v1"
KIND = "ConversionReview"


def review_conversion(review: Any) -> dict[str, Any]:
    """The ConversionReview response to `review`; never raises."""
    return convert_review(review)[0]


def convert_review(review: Any) -> tuple[dict[str, Any], list[str]]:
    """The response, and one line per field the target version dropped."""
    try:
        request = request_of(review, API_VERSION, KIND)
        desired = request.get("desiredAPIVersion")
        if desired not in VERSIONS:
            expected = " or ".join(VERSIONS)
            raise ReviewError(f"request.desiredAPIVersion: expected {expected}, got {desired!r}")
        objects = request.get("objects")
        if not isinstance(objects, list):
            raise ReviewError("request.objects: required field is missing or not a list")
        converted, dropped = [], []
        for i, obj in enumerate(objects):
            doc, lost = _convert(obj, desired, label(obj, f"request.objects[{i}]"))
            converted.append(doc)
            dropped += lost
    except (ReviewError, ManifestError) as err:
        return failed(uid_of(review), _message(err)), []
    except (RecursionError, ValueError) as err:  # nested past what the models go through
        return failed(uid_of(review), f"request.objects: {unreadable(err)}"), []
    body = {"uid": request["uid"], "convertedObjects": converted, "result": {"status": "Success"}}
    return {"apiVersion": API_VERSION, "kind": KIND, "response": body}, dropped


def _convert(obj: Any, desired: str, where: str) -> tuple[dict[str, Any], list[str]]:
    check(obj, where)
    result = convert(obj, desired)
    check(result.doc, f"{where} (as {desired})")
    lost = [f"{where}: {p}: dropped, {desired} has no such field" for p in result.dropped]
    return result.doc, lost


def _message(err: ValueError | ManifestError) -> str:
    return one_line(err.problems) if isinstance(err, ManifestError) else str(err)


def failed(uid: str, message: str) -> dict[str, Any]:
    body = {"uid": uid, "convertedObjects": [], "result": {"status": "Failure", "message": message}}
    return {"apiVersion": API_VERSION, "kind": KIND, "response": body}
