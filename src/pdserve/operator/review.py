"""What the admission and conversion webhooks share: reading a review's envelope, naming the
object a message is about, and keeping every message on one line.

Both reviews have the same shape, `{apiVersion, kind, request: {uid, ...}}`, answered by
`{apiVersion, kind, response: {uid, ...}}` with the request's uid. A review that is not
that shape is answered too (uid "" when there is none), never raised out of the webhook.
"""

from __future__ import annotations

from typing import Any

from pdserve.kube import Key


class ReviewError(ValueError):
    """The review itself is malformed: one line naming the field."""


def request_of(review: Any, api_version: str, kind: str) -> dict[str, Any]:
    """`review.request`, once the envelope is the expected apiVersion and kind with a uid."""
    if not isinstance(review, dict):
        raise ReviewError(f"expected a {kind} object, got {type(review).__name__}")
    if review.get("apiVersion") != api_version or review.get("kind") != kind:
        got = f"{review.get('apiVersion')!r} {review.get('kind')!r}"
        raise ReviewError(f"expected apiVersion {api_version} and kind {kind}, got {got}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError("request: required field is missing or not an object")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise ReviewError("request.uid: required field is missing or not a string")
    return request


def mapping(value: Any) -> dict[str, Any]:
    """`value` where it is an object, else {}: for reading what may be missing."""
    return value if isinstance(value, dict) else {}


def uid_of(review: Any) -> str:
    """The request's uid where there is one to echo, else ""."""
    uid = mapping(mapping(review).get("request")).get("uid")
    return uid if isinstance(uid, str) else ""


def label(obj: Any, fallback: str, namespace: Any = None, name: Any = None) -> str:
    """What a message names the object by, where `pdserve validate` names the file:
    `Kind namespace/name` (kube.Key's form), or `fallback` for an object without them."""
    doc = mapping(obj)
    meta = mapping(doc.get("metadata"))
    kind, ns = doc.get("kind"), meta.get("namespace") or namespace
    nm = meta.get("name") or name
    if not (isinstance(kind, str) and kind and isinstance(nm, str) and nm):
        return fallback
    return str(Key("", kind, ns if isinstance(ns, str) and ns else None, nm))


def one_line(problems: list[str]) -> str:
    """Problems joined by "; ", each kept to a line (a template error may quote a newline)."""
    return "; ".join(" ".join(p.split("\n")) for p in problems)


def unreadable(err: Exception) -> str:
    """Why an object nested too deeply could not be checked (a RecursionError, or pydantic's
    ValueError at its depth limit), as one line."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return one_line([f"cannot be read: {err}"])
