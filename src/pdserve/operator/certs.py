"""The webhook certificate every operator replica serves: the Secret `pdserve-webhook-tls`
in the operator's namespace (the contract of install/manifests.py).

By default the operator makes that Secret itself, self-signed, once: the first replica to
find it missing applies a fresh pair, and every replica then serves what the API server
holds, so that the one CA injected into the webhook configurations trusts all of them.
Two replicas racing both apply, the last write wins, and each re-reads after writing; a
replica that re-read between the two writes serves the loser's pair until its refresh
(webhooks.py) reads the Secret again and reloads. With cert-manager the Secret is
cert-manager's (it holds ca.crt too) and is only read.

All I/O goes through `pdserve.kube.Objects`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NamedTuple

from pdserve.errors import UserError
from pdserve.kube import Key, Objects
from pdserve.tls import LOOPBACK, self_signed_pem

SECRET = "pdserve-webhook-tls"
SERVICE = "pdserve-webhook"
DEFAULT_NAMESPACE = "pdserve-system"
FIELD_MANAGER = "pdserve-operator"
TLS_TYPE = "kubernetes.io/tls"


class WebhookTLS(NamedTuple):
    """A serving pair as the Secret holds it, and the CA that makes clients trust it: the
    Secret's ca.crt (cert-manager's), else its tls.crt (a self-signed certificate is its
    own CA)."""

    cert: str
    key: str
    ca: str


def secret_key(namespace: str) -> Key:
    return Key("v1", "Secret", namespace, SECRET)


def dns_names(namespace: str) -> tuple[str, ...]:
    """The webhook Service's names, as the API server calls it, and loopback (a probe or a
    port-forward from the pod itself)."""
    host = f"{SERVICE}.{namespace}.svc"
    return (host, f"{host}.cluster.local", *LOOPBACK)


def read(objects: Objects, namespace: str) -> WebhookTLS | None:
    """The pair the Secret holds now; None when there is no Secret, or it has no tls.crt
    and tls.key yet (cert-manager has not issued). Undecodable data is a UserError."""
    secret = objects.get(secret_key(namespace))
    if secret is None:
        return None
    data = secret.get("data") or {}
    if not data.get("tls.crt") or not data.get("tls.key"):
        return None
    cert, key = _decoded(data, "tls.crt", namespace), _decoded(data, "tls.key", namespace)
    ca = _decoded(data, "ca.crt", namespace) if data.get("ca.crt") else cert
    return WebhookTLS(cert, key, ca)


def _decoded(data: dict[str, Any], field: str, namespace: str) -> str:
    try:
        return base64.b64decode(data[field], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError) as err:
        raise UserError(f"Secret {namespace}/{SECRET}: {field} is not base64 PEM: {err}") from None


def secret_body(namespace: str, cert: str, key: str) -> dict[str, Any]:
    """The apply body of a self-signed Secret: type kubernetes.io/tls, no ca.crt."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "pdserve", "app.kubernetes.io/part-of": "pdserve"},
        },
        "type": TLS_TYPE,
        "data": {
            "tls.crt": base64.b64encode(cert.encode()).decode(),
            "tls.key": base64.b64encode(key.encode()).decode(),
        },
    }


def webhook_tls(objects: Objects, namespace: str, create: bool) -> WebhookTLS | None:
    """The Secret's pair; when it has none and `create`, a new self-signed one is applied
    and the Secret read again, so that what is returned is what the server stores (another
    replica's pair, if it wrote last). None only when it has none and not `create`."""
    found = read(objects, namespace)
    if found is not None or not create:
        return found
    cert, key = self_signed_pem(dns_names(namespace))
    objects.apply(secret_body(namespace, cert, key), FIELD_MANAGER)
    stored = read(objects, namespace)
    if stored is None:
        raise UserError(f"Secret {namespace}/{SECRET}: applied, but reads back without a pair")
    return stored


def webhook_pair(objects: Objects, namespace: str, create: bool) -> tuple[str, str] | None:
    """(tls.crt, tls.key) as the Secret holds them; see webhook_tls."""
    tls = webhook_tls(objects, namespace, create)
    return None if tls is None else (tls.cert, tls.key)
