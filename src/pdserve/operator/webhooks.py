"""The operator's webhook server: HTTPS, POST /validate (admission), POST /convert (CRD
conversion), GET /healthz.

TLS, as install/manifests.py's contract has it: with a cluster (`objects`), the pair is
the one every replica shares, from the Secret `pdserve-webhook-tls` in the operator's
namespace (certs.py: made self-signed by the first replica when missing; cert-manager's
with `cert_manager`). Unless cert-manager injects it, the Secret's CA is applied as the
caBundle of the ValidatingWebhookConfiguration and of the two CRDs' conversion webhooks.
The Secret is re-read every REFRESH_SECONDS; a changed pair is loaded into the listening
server's context in place (and its CA injected). A folder holding tls.crt and tls.key
(`cert_dir`) is served as it is; without either, a fresh self-signed pair in memory.

Bodies are read through pdserve.json_body, size-limited: JSON that cannot be read is a 400
with one line, in the shape of the review the endpoint answers; any review that parses
gets a 200 whose review says allowed false / Failure when it is malformed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pdserve import json_body
from pdserve.errors import UserError
from pdserve.kube import Key, Objects
from pdserve.logs import event, now_ms
from pdserve.operator import admission, certs, conversion
from pdserve.operator.review import label, mapping, uid_of
from pdserve.tls import load_pem, pem_context, self_signed_pem, server_context

log = logging.getLogger("pdserve.operator.webhooks")

SERVICE, NAMESPACE = certs.SERVICE, certs.DEFAULT_NAMESPACE
FIELD_MANAGER = certs.FIELD_MANAGER
REFRESH_SECONDS = 60.0  # how often the Secret is re-read (cert-manager renews, or a race)
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
    host: str,
    port: int,
    cert_dir: str | None,
    objects: Objects | None = None,
    *,
    namespace: str = NAMESPACE,
    cert_manager: bool = False,
) -> web.AppRunner:
    """Listening once this returns (port 0: any free port, read `runner.addresses`); the
    caller stops it with `runner.cleanup()`, which also stops the Secret's refresh.

    TLS, first match: `cert_dir`'s tls.crt and tls.key; with `objects`, the Secret
    `pdserve-webhook-tls` in `namespace` (made self-signed when missing, unless
    `cert_manager`), re-read every REFRESH_SECONDS; else a self-signed pair in memory."""
    source: Source | None = None
    if cert_dir or objects is None:
        ctx, tls = _tls(cert_dir, namespace), cert_dir or "self-signed"
    else:
        pair = await asyncio.to_thread(_first, objects, namespace, cert_manager)
        ctx, tls = pem_context(pair.cert, pair.key), f"Secret {namespace}/{certs.SECRET}"
        source = Source(objects, namespace, cert_manager, pair, ctx)
    tasks: list[asyncio.Task[None]] = []

    async def stop_refresh(_: web.Application) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    server = app()
    server.on_cleanup.append(stop_refresh)
    if source is not None:
        server[SOURCE] = source  # runner.app[SOURCE]: for a refresh by hand
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    except OSError as err:
        await runner.cleanup()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    event(log, "ready", host=host, port=runner.addresses[0][1], tls=tls)
    if source is not None:
        if not cert_manager:
            await asyncio.to_thread(inject_ca_bundle, source.objects, source.tls.ca)
        tasks.append(asyncio.create_task(_refresh_loop(source)))
    return runner


def _first(objects: Objects, namespace: str, cert_manager: bool) -> certs.WebhookTLS:
    """The Secret's pair at start; without one (cert-manager's not issued yet, or the API
    server unreachable) a one-line UserError: the operator's startup fails, kopf retries
    it, and the pod is neither live nor ready meanwhile (its probe is served after)."""
    where = f"Secret {namespace}/{certs.SECRET}"
    try:
        tls = certs.webhook_tls(objects, namespace, create=not cert_manager)
    except UserError:
        raise
    except Exception as err:  # the API server's failure, in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{where}: cannot read or create the webhook certificate: {first}"
        ) from None
    if tls is None:
        raise UserError(
            f"{where} not found or without tls.crt/tls.key: with --cert-manager, "
            "cert-manager makes it; its Certificate may not be ready yet"
        )
    return tls


@dataclass
class Source:
    """Where the served pair comes from, and what is served now."""

    objects: Objects
    namespace: str
    cert_manager: bool
    tls: certs.WebhookTLS
    ctx: ssl.SSLContext


SOURCE = web.AppKey("source", Source)


def refresh(source: Source) -> bool:
    """One re-read of the Secret (blocking): when its pair changed, the server's context
    loads it in place and, unless cert-manager's, the new CA is injected. True when it
    changed. A Secret gone missing is made again (self-signed mode) or, with cert-manager,
    passed over: the current pair is served until it returns."""
    tls = certs.webhook_tls(source.objects, source.namespace, create=not source.cert_manager)
    if tls is None:
        event(log, "webhook_secret_missing", logging.WARNING, secret=certs.SECRET)
        return False
    if tls == source.tls:
        return False
    pem_context(tls.cert, tls.key)  # a pair that does not load leaves the served one alone
    load_pem(source.ctx, tls.cert, tls.key)
    source.tls = tls
    event(log, "webhook_certificate_reloaded", secret=certs.SECRET)
    if not source.cert_manager:
        inject_ca_bundle(source.objects, tls.ca)
    return True


async def _refresh_loop(source: Source) -> None:
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            await asyncio.to_thread(refresh, source)
        except Exception as err:  # logged; the current pair is served, and tried again
            event(log, "webhook_refresh_failed", logging.ERROR, error=" ".join(str(err).split()))


def _tls(cert_dir: str | None, namespace: str) -> ssl.SSLContext:
    """The context from `cert_dir`, or (None, or "" as an unset flag leaves it) from a
    fresh self-signed pair held only in memory, which nobody is told to trust."""
    if not cert_dir:
        return pem_context(*self_signed_pem(certs.dns_names(namespace)))
    try:
        return server_context(cert_dir)
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
