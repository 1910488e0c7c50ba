"""The operator's webhook server: HTTPS, POST /validate (admission), POST /convert (CRD
conversion), GET /healthz.

TLS comes from a folder holding tls.crt and tls.key (as cert-manager mounts a Secret), or
else is a fresh self-signed certificate for the webhook Service's DNS names (and loopback,
for a probe or port-forward from the pod itself). A self-signed certificate is trusted by
nobody until the API server is told: with `objects` given, its PEM is applied as the
caBundle of the ValidatingWebhookConfiguration and of the two CRDs' conversion webhooks.

Bodies are read through pdserve.json_body, size-limited: JSON that cannot be read is a 400
with one line, in the shape of the review the endpoint answers; any review that parses
gets a 200 whose review says allowed false / Failure when it is malformed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pdserve import json_body
from pdserve.errors import UserError
from pdserve.kube import Key, Objects
from pdserve.logs import event, now_ms
from pdserve.operator import admission, conversion
from pdserve.operator.review import label, mapping, uid_of
from pdserve.tls import LOOPBACK, pem_context, self_signed_pem, server_context

log = logging.getLogger("pdserve.operator.webhooks")

SERVICE, NAMESPACE = "pdserve-webhook", "pdserve-system"
DNS_NAMES = (f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}.svc.cluster.local")
FIELD_MANAGER = "pdserve-operator"
WEBHOOK_CONFIG = Key(
    "admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", None,
    "pdserve-validating-webhook",
)  # fmt: skip
CRDS = tuple(
    Key("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name)
    for name in (
        "llminferenceservices.serving.kserve.io",
        "llminferenceserviceconfigs.serving.kserve.io",
    )
)
# A list's ConversionReview holds every object of the list at once; 16 MiB is ten objects
# at etcd's 1.5 MiB limit, and far more of the few-kilobyte ones services are.
MAX_BODY = 16 * 1024 * 1024

Refusal = Callable[[str], dict[str, Any]]


async def serve(
    host: str, port: int, cert_dir: str | None, objects: Objects | None = None
) -> web.AppRunner:
    """Listening once this returns (port 0: any free port, read `runner.addresses`); the
    caller stops it with `runner.cleanup()`."""
    ctx, ca = _tls(cert_dir)
    runner = web.AppRunner(app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    except OSError as err:
        await runner.cleanup()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    bound = runner.addresses[0][1]
    event(log, "ready", host=host, port=bound, tls="self-signed" if ca else cert_dir)
    if ca is not None and objects is not None:
        await asyncio.to_thread(inject_ca_bundle, objects, ca)
    return runner


def _tls(cert_dir: str | None) -> tuple[ssl.SSLContext, str | None]:
    """The server context, and the CA bundle to hand out when the certificate is our own
    (no folder given: None, or "" as an unset flag leaves it)."""
    if not cert_dir:
        cert, key = self_signed_pem((*DNS_NAMES, *LOOPBACK))
        return pem_context(cert, key), cert
    try:
        return server_context(cert_dir), None
    except (OSError, ssl.SSLError) as err:
        raise UserError(f"{cert_dir}: cannot load tls.crt and tls.key: {err}") from err


def app() -> web.Application:
    out = web.Application(client_max_size=MAX_BODY)
    out.router.add_post("/validate", _validate)
    out.router.add_post("/convert", _convert)
    out.router.add_get("/healthz", _healthz)
    return out


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _validate(request: web.Request) -> web.Response:
    started = time.perf_counter()
    review, refused = await _read(request, lambda m: admission.denied("", 400, m))
    if refused is not None:
        return refused
    try:
        out = await asyncio.to_thread(admission.review_admission, review)
    except Exception as err:  # a bug of ours: answered, logged, and the server goes on
        return _failed(request, err, lambda m: admission.denied(uid_of(review), 500, m))
    req, resp = mapping(mapping(review).get("request")), out["response"]
    obj = req.get("object")
    event(
        log,
        "admission",
        uid=resp["uid"],
        operation=req.get("operation"),
        object=label(obj, "request.object", req.get("namespace"), req.get("name")),
        allowed=resp["allowed"],
        code=(resp.get("status") or {}).get("code"),
        message=(resp.get("status") or {}).get("message"),
        ms=now_ms(started),
    )
    return web.json_response(out)


async def _convert(request: web.Request) -> web.Response:
    started = time.perf_counter()
    review, refused = await _read(request, lambda m: conversion.failed("", m))
    if refused is not None:
        return refused
    try:
        out, dropped = await asyncio.to_thread(conversion.convert_review, review)
    except Exception as err:  # a bug of ours: answered, logged, and the server goes on
        return _failed(request, err, lambda m: conversion.failed(uid_of(review), m))
    req, resp = mapping(mapping(review).get("request")), out["response"]
    event(
        log,
        "conversion",
        uid=resp["uid"],
        desired_api_version=req.get("desiredAPIVersion"),
        objects=len(resp["convertedObjects"]),
        result=resp["result"]["status"],
        message=resp["result"].get("message"),
        dropped=dropped or None,
        ms=now_ms(started),
    )
    return web.json_response(out)


async def _read(request: web.Request, refusal: Refusal) -> tuple[Any, web.Response | None]:
    """The body's JSON, or the 400/413 answer in the endpoint's own review shape."""
    try:
        review = json_body.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        message = f"request body larger than {MAX_BODY} bytes"
        return None, _refuse(request, 413, message, refusal)
    except ValueError as err:
        return None, _refuse(request, 400, f"request body: invalid JSON: {err}", refusal)
    return review, None


def _refuse(request: web.Request, status: int, message: str, refusal: Refusal) -> web.Response:
    message = " ".join(message.split("\n"))
    event(log, "refused", logging.WARNING, path=request.path, status=status, message=message)
    return web.json_response(refusal(message), status=status)


def _failed(request: web.Request, err: Exception, refusal: Refusal) -> web.Response:
    log.exception("request_failed", extra={"fields": {"path": request.path}})
    return web.json_response(refusal(f"internal error: {type(err).__name__}: {err}"), status=500)


# --- caBundle injection ----------------------------------------------------------------------
def inject_ca_bundle(objects: Objects, ca_pem: str) -> list[Key]:
    """Apply `ca_pem` as the caBundle of the webhook configuration's webhooks and of the
    CRDs' conversion webhooks, each a minimal body under our field manager; the objects it
    was applied to. A missing object, or a CRD without a conversion webhook, is logged and
    passed over: the server still serves whoever trusts it."""
    bundle = base64.b64encode(ca_pem.encode()).decode()
    done = []
    for key in (WEBHOOK_CONFIG, *CRDS):
        try:
            current = objects.get(key)
            body = None if current is None else _bundle_body(key, current, bundle)
            if body is not None:
                objects.apply(body, FIELD_MANAGER)
                done.append(key)
        except Exception as err:  # the API server's failure is logged, never fatal
            event(log, "ca_bundle_failed", logging.ERROR, object=str(key), error=str(err))
            continue
        if current is None:
            event(log, "ca_bundle_target_missing", logging.WARNING, object=str(key))
        elif body is None:
            event(log, "ca_bundle_not_applicable", logging.WARNING, object=str(key))
        else:
            event(log, "ca_bundle_injected", object=str(key))
    return done


def _bundle_body(key: Key, current: dict[str, Any], bundle: str) -> dict[str, Any] | None:
    """The apply body setting only the caBundle fields; None where `current` has none to set
    (no webhooks, or a CRD whose conversion strategy is not Webhook)."""
    head = {"apiVersion": key.api_version, "kind": key.kind, "metadata": {"name": key.name}}
    client = {"clientConfig": {"caBundle": bundle}}
    if key == WEBHOOK_CONFIG:
        names = [w["name"] for w in current.get("webhooks") or [] if w.get("name")]
        return {**head, "webhooks": [{"name": n, **client} for n in names]} if names else None
    conv = (current.get("spec") or {}).get("conversion") or {}
    if conv.get("strategy") != "Webhook":
        return None
    return {**head, "spec": {"conversion": {"webhook": client}}}
