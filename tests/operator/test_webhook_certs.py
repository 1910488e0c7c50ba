"""The webhook certificate every replica shares: the Secret `pdserve-webhook-tls`, made once
by the first replica (self-signed), read by the rest, its CA the one injected; with
cert-manager only read; and a changed Secret reloaded into the listening server."""

from __future__ import annotations

import base64
import copy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography import x509
from test_webhooks import CRD_NAMES, ManagedCluster, crd, injected_ca, webhook_config

from kubefake import RecordedCluster
from pdserve.errors import UserError
from pdserve.install import manifests
from pdserve.kube import Key
from pdserve.operator import certs, webhooks
from pdserve.tls import self_signed_pem

NS = "pdserve-system"
SECRET = certs.secret_key(NS)


def _merged(old: Any, new: Any) -> Any:
    """`new` over `old` as server-side apply merges them: maps by key, webhooks by name."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    if isinstance(old, list) and isinstance(new, list) and all("name" in w for w in old + new):
        by_name = {w["name"]: w for w in old}
        return [_merged(by_name.get(w["name"]), w) for w in new]
    return copy.deepcopy(new)


class ApplyingCluster(ManagedCluster):
    """Keeps the fields an apply does not set (the recorded cluster replaces the object), so
    that a second injection finds the CRDs' conversion strategy and the webhooks' names."""

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        old = self.objects.get(Key.of(obj))
        if old is not None and obj["kind"] != "Secret":
            base = copy.deepcopy(old)
            base["metadata"].pop("resourceVersion", None)
            obj = _merged(base, obj)
        return super().apply(obj, field_manager)


def _cluster(*extra: dict[str, Any]) -> ManagedCluster:
    return ApplyingCluster([webhook_config(), *(crd(n) for n in CRD_NAMES), *extra])


def _stored(cluster: RecordedCluster) -> tuple[str, str]:
    data = cluster.objects[SECRET]["data"]
    return (
        base64.b64decode(data["tls.crt"]).decode(),
        base64.b64decode(data["tls.key"]).decode(),
    )


def _secret(cert: str, key: str, ca: str | None = None) -> dict[str, Any]:
    body = certs.secret_body(NS, cert, key)
    if ca is not None:
        body["data"]["ca.crt"] = base64.b64encode(ca.encode()).decode()
    return body


Start = Callable[..., Awaitable[tuple[web.AppRunner, str]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []

    async def _start(objects: Any, **kw: Any) -> tuple[web.AppRunner, str]:
        runner = await webhooks.serve("127.0.0.1", 0, None, objects, **kw)
        runners.append(runner)
        return runner, f"https://127.0.0.1:{runner.addresses[0][1]}"

    yield _start
    for runner in runners:
        await runner.cleanup()


async def _trusted(url: str, ca: str) -> bool:
    """Whether a client trusting only `ca` completes a handshake (a new connection)."""
    ctx = ssl.create_default_context(cadata=ca)
    async with httpx.AsyncClient(verify=ctx, timeout=30) as client:
        try:
            return (await client.get(f"{url}/healthz")).status_code == 200
        except httpx.ConnectError:
            return False


def test_the_secret_name_is_the_install_contracts() -> None:
    assert certs.SECRET == manifests.WEBHOOK_TLS_SECRET
    assert certs.DEFAULT_NAMESPACE == manifests.NAMESPACE
    assert certs.SERVICE == manifests.WEBHOOK_SERVICE


def test_the_first_replica_creates_the_secret_and_the_second_reads_it() -> None:
    cluster = ManagedCluster([])
    pair = certs.webhook_pair(cluster, NS, create=True)
    assert pair is not None and pair == _stored(cluster)
    [(manager, body)] = cluster.applied
    assert manager == "pdserve-operator"
    assert body["type"] == "kubernetes.io/tls" and set(body["data"]) == {"tls.crt", "tls.key"}
    cert = x509.load_pem_x509_certificate(pair[0].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName)[:2] == [
        "pdserve-webhook.pdserve-system.svc",
        "pdserve-webhook.pdserve-system.svc.cluster.local",
    ]

    cluster.calls.clear()
    assert certs.webhook_pair(cluster, NS, create=True) == pair  # the second replica
    assert cluster.writes() == 0


def test_racing_replicas_converge_on_the_stored_pair() -> None:
    """Another replica's apply lands just after ours: we return what the server kept."""
    theirs = self_signed_pem(("other",))

    class Racing(ManagedCluster):
        def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
            super().apply(obj, field_manager)
            return super().apply(_secret(*theirs), field_manager)

    cluster = Racing([])
    assert certs.webhook_pair(cluster, NS, create=True) == theirs == _stored(cluster)


def test_without_create_a_missing_or_unissued_secret_is_none() -> None:
    cluster = RecordedCluster()
    assert certs.webhook_pair(cluster, NS, create=False) is None
    cluster.put({**_secret("", ""), "data": {}})  # cert-manager has not issued yet
    assert certs.webhook_pair(cluster, NS, create=False) is None
    assert cluster.writes() == 0


def test_undecodable_data_is_one_user_error() -> None:
    cluster = RecordedCluster([{**_secret("c", "k"), "data": {"tls.crt": "!!", "tls.key": "a2V5"}}])
    with pytest.raises(UserError, match=r"^Secret pdserve-system/pdserve-webhook-tls: tls\.crt "):
        certs.webhook_pair(cluster, NS, create=True)


async def test_two_replicas_inject_one_ca_that_trusts_both(start: Start) -> None:
    """The bug this fixes: each replica self-signing its own, half the calls failed TLS."""
    cluster = _cluster()
    _, first = await start(cluster)
    _, second = await start(cluster)
    cert, _ = _stored(cluster)
    assert injected_ca(cluster) == cert
    assert await _trusted(first, cert) and await _trusted(second, cert)


async def test_the_secrets_ca_crt_is_injected_when_it_has_one(start: Start) -> None:
    ca_cert, _ = self_signed_pem()
    cert, key = self_signed_pem()
    cluster = _cluster(_secret(cert, key, ca=ca_cert))
    await start(cluster)
    assert injected_ca(cluster) == ca_cert
    assert [Key.of(b).kind for _, b in cluster.applied] == [
        "ValidatingWebhookConfiguration",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
    ]


async def test_cert_manager_without_its_secret_is_one_user_error(start: Start) -> None:
    cluster = _cluster()
    with pytest.raises(UserError) as err:
        await start(cluster, cert_manager=True)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("Secret pdserve-system/pdserve-webhook-tls not found")
    assert "Certificate may not be ready" in message
    assert cluster.writes() == 0


async def test_cert_manager_secret_is_served_and_nothing_written(start: Start) -> None:
    cert, key = self_signed_pem()
    cluster = _cluster(_secret(cert, key, ca=cert))
    cluster.calls.clear()
    _, url = await start(cluster, cert_manager=True)
    assert cluster.writes() == 0
    assert await _trusted(url, cert)


async def test_the_secret_is_read_in_the_operators_namespace(start: Start) -> None:
    cluster = _cluster()
    await start(cluster, namespace="ops")
    assert certs.secret_key("ops") in cluster.objects and SECRET not in cluster.objects


async def test_an_api_server_down_at_start_is_one_user_error(start: Start) -> None:
    class Down(RecordedCluster):
        def get(self, key: Key) -> dict[str, Any] | None:
            raise ConnectionError("connection refused\nmore")

    with pytest.raises(UserError, match=r"^Secret pdserve-system/pdserve-webhook-tls: .*refused$"):
        await start(Down())


async def test_a_refresh_reloads_a_changed_secret_in_place(start: Start) -> None:
    cluster = _cluster()
    runner, url = await start(cluster)
    old, _ = _stored(cluster)
    source = runner.app[webhooks.SOURCE]
    cluster.calls.clear()
    assert not webhooks.refresh(source) and cluster.writes() == 0  # unchanged: nothing done

    new = self_signed_pem(certs.dns_names(NS))
    renewed = copy.deepcopy(cluster.objects[SECRET])
    renewed["data"] = _secret(*new)["data"]
    cluster.put(renewed)
    assert webhooks.refresh(source)
    assert injected_ca(cluster) == new[0]
    assert await _trusted(url, new[0]) and not await _trusted(url, old)


async def test_cert_manager_refresh_keeps_serving_when_the_secret_goes(start: Start) -> None:
    cert, key = self_signed_pem()
    cluster = _cluster(_secret(cert, key, ca=cert))
    runner, url = await start(cluster, cert_manager=True)
    del cluster.objects[SECRET]
    assert not webhooks.refresh(runner.app[webhooks.SOURCE])
    assert cluster.writes() == 0 and await _trusted(url, cert)
