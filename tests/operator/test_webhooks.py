"""The webhook server over real HTTPS: both reviews answered, unreadable bodies a 400 in one
line while the server goes on, and the self-signed CA injected where the API server reads
it. Each server started here is stopped by its fixture."""

from __future__ import annotations

import base64
import copy
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from cryptography import x509

from api.test_validate import BAD, GOOD
from kubefake import RecordedCluster
from pdserve.api.convert import V1ALPHA1, V1ALPHA2
from pdserve.errors import UserError
from pdserve.kube import Key
from pdserve.operator import certs, webhooks
from pdserve.tls import self_signed

CRD_NAMES = [k.name for k in webhooks.CRDS]


class ManagedCluster(RecordedCluster):
    """A recorded cluster that remembers each apply's field manager and body."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        super().__init__(docs)
        self.applied: list[tuple[str, dict[str, Any]]] = []

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        self.applied.append((field_manager, copy.deepcopy(obj)))
        return super().apply(obj, field_manager)


def webhook_config() -> dict[str, Any]:
    client = {"service": {"name": "pdserve-webhook", "namespace": "pdserve-system"}}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "pdserve-validating-webhook"},
        "webhooks": [
            {"name": n, "clientConfig": {**client, "path": "/validate"}, "sideEffects": "None"}
            for n in ("llminferenceservices.pdserve.io", "llminferenceserviceconfigs.pdserve.io")
        ],
    }


def crd(name: str, strategy: str = "Webhook") -> dict[str, Any]:
    conversion: dict[str, Any] = {"strategy": strategy}
    if strategy == "Webhook":
        conversion["webhook"] = {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": "pdserve-webhook", "path": "/convert"}},
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": "serving.kserve.io", "conversion": conversion},
    }


Start = Callable[..., Awaitable[str]]
Served = tuple[httpx.AsyncClient, "ManagedCluster"]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start serve() on a free loopback port; its base URL. Every one is stopped after."""
    runners: list[web.AppRunner] = []

    async def _start(cert_dir: str | None = None, objects: Any = None) -> str:
        runner = await webhooks.serve("127.0.0.1", 0, cert_dir, objects)
        runners.append(runner)
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    yield _start
    for runner in runners:
        await runner.cleanup()


def injected_ca(cluster: RecordedCluster) -> str:
    """The one PEM the cluster's webhook configuration and CRDs were given."""
    config = cluster.objects[webhooks.WEBHOOK_CONFIG]
    bundles = {w["clientConfig"]["caBundle"] for w in config["webhooks"]}
    for key in webhooks.CRDS:
        bundles.add(
            cluster.objects[key]["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"]
        )
    [bundle] = bundles
    return base64.b64decode(bundle).decode()


def admission_review(obj: Any) -> dict[str, Any]:
    request = {"uid": "u-1", "operation": "CREATE", "namespace": "team", "object": obj}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def conversion_review(desired: str, *objects: Any) -> dict[str, Any]:
    request = {"uid": "u-2", "desiredAPIVersion": desired, "objects": list(objects)}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview", "request": request}


@pytest.fixture
async def served(start: Start) -> AsyncIterator[Served]:
    """A self-signed server given a cluster, and a client trusting only the CA it injected."""
    cluster = ManagedCluster([webhook_config(), *(crd(n) for n in CRD_NAMES)])
    url = await start(None, cluster)
    ctx = ssl.create_default_context(cadata=injected_ca(cluster))
    async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=30) as client:
        yield client, cluster


async def test_both_reviews_are_answered_over_https(served: Served) -> None:
    client, _ = served
    assert (await client.get("/healthz")).status_code == 200
    good = await client.post("/validate", json=admission_review(yaml.safe_load(GOOD)))
    assert good.status_code == 200
    assert good.json() == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "u-1", "allowed": True},
    }
    bad = await client.post(
        "/validate", json=admission_review(yaml.safe_load(BAD["tensor zero"][0]))
    )
    assert bad.status_code == 200
    assert bad.json()["response"] == {
        "uid": "u-1",
        "allowed": False,
        "status": {
            "code": 422,
            "message": "LLMInferenceService team/svc: spec.parallelism.tensor: must be >= 1",
        },
    }
    up = await client.post("/convert", json=conversion_review(V1ALPHA2, yaml.safe_load(GOOD)))
    assert up.status_code == 200
    resp = up.json()["response"]
    assert resp["uid"] == "u-2" and resp["result"] == {"status": "Success"}
    [obj] = resp["convertedObjects"]
    assert obj["apiVersion"] == V1ALPHA2
    down = await client.post("/convert", json=conversion_review(V1ALPHA1, obj))
    assert down.json()["response"]["convertedObjects"] == [yaml.safe_load(GOOD)]


BODIES = {
    "not JSON": (b"{not json", "request body: invalid JSON: "),
    "not UTF-8": (b'{"a": "\xff"}', "request body: invalid JSON: 'utf-8' codec can't decode"),
    "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    "empty": (b"", "request body: invalid JSON: Expecting value"),
}


@pytest.mark.parametrize("case", sorted(BODIES))
async def test_an_unreadable_body_is_a_400_in_one_line_and_the_server_goes_on(
    served: Served, case: str
) -> None:
    client, _ = served
    body, expected = BODIES[case]
    headers = {"content-type": "application/json"}
    denial = await client.post("/validate", content=body, headers=headers)
    assert denial.status_code == 400
    resp = denial.json()["response"]
    assert resp["uid"] == "" and resp["allowed"] is False and resp["status"]["code"] == 400
    assert expected in resp["status"]["message"] and "\n" not in resp["status"]["message"]
    fail = await client.post("/convert", content=body, headers=headers)
    assert fail.status_code == 400
    result = fail.json()["response"]["result"]
    assert result["status"] == "Failure" and expected in result["message"]
    assert "\n" not in result["message"]
    assert (await client.get("/healthz")).status_code == 200
    again = await client.post("/validate", json=admission_review(yaml.safe_load(GOOD)))
    assert again.json()["response"]["allowed"] is True


async def test_a_review_that_parses_but_is_malformed_is_answered_in_its_review(
    served: Served,
) -> None:
    client, _ = served
    resp = await client.post("/validate", json={"kind": "AdmissionReview"})
    assert resp.status_code == 200
    assert resp.json()["response"]["status"]["code"] == 400
    resp = await client.post("/convert", json=[1])
    assert resp.json()["response"]["result"]["status"] == "Failure"


async def test_a_body_over_the_limit_is_a_413(
    start: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(webhooks, "MAX_BODY", 1024)
    self_signed(tmp_path)
    url = await start(str(tmp_path))
    async with httpx.AsyncClient(base_url=url, verify=False) as client:
        resp = await client.post("/validate", content=b" " * 4096)
        assert resp.status_code == 413
        assert resp.json()["response"]["status"]["message"] == (
            "request body larger than 1024 bytes"
        )
        assert (await client.get("/healthz")).status_code == 200


async def test_the_ca_bundle_is_applied_minimally_under_the_operators_field_manager(
    served: Served,
) -> None:
    _, cluster = served
    assert [m for m, _ in cluster.applied] == ["pdserve-operator"] * 4
    bundle = base64.b64encode(injected_ca(cluster).encode()).decode()
    bodies = {Key.of(body): body for _, body in cluster.applied}
    secret = bodies.pop(certs.secret_key("pdserve-system"))  # made first, then injected
    assert secret["data"]["tls.crt"] == bundle
    assert Key.of(cluster.applied[0][1]) == certs.secret_key("pdserve-system")
    assert bodies[webhooks.WEBHOOK_CONFIG] == {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "pdserve-validating-webhook"},
        "webhooks": [
            {"name": w["name"], "clientConfig": {"caBundle": bundle}}
            for w in webhook_config()["webhooks"]
        ],
    }
    for key in webhooks.CRDS:
        assert bodies[key] == {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": key.name},
            "spec": {"conversion": {"webhook": {"clientConfig": {"caBundle": bundle}}}},
        }


async def test_the_self_signed_certificate_names_the_webhook_service(served: Served) -> None:
    _, cluster = served
    cert = x509.load_pem_x509_certificate(injected_ca(cluster).encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName)[:2] == [
        "pdserve-webhook.pdserve-system.svc",
        "pdserve-webhook.pdserve-system.svc.cluster.local",
    ]


async def test_a_missing_target_is_logged_and_the_rest_injected(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = ManagedCluster([crd(CRD_NAMES[0]), crd(CRD_NAMES[1], strategy="None")])
    with caplog.at_level(logging.INFO, logger="pdserve.operator.webhooks"):
        url = await start(None, cluster)
    assert [Key.of(body).name for _, body in cluster.applied] == [certs.SECRET, CRD_NAMES[0]]
    events = {(r.getMessage(), r.__dict__["fields"].get("object")) for r in caplog.records}
    assert ("ca_bundle_target_missing", str(webhooks.WEBHOOK_CONFIG)) in events
    assert ("ca_bundle_not_applicable", str(webhooks.CRDS[1])) in events
    assert ("ca_bundle_injected", str(webhooks.CRDS[0])) in events
    async with httpx.AsyncClient(verify=False) as client:
        assert (await client.get(f"{url}/healthz")).status_code == 200


async def test_an_api_server_failure_is_logged_not_fatal(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    class Down(RecordedCluster):
        """Up for the webhook Secret, down for what the CA is injected into."""

        def get(self, key: Key) -> dict[str, Any] | None:
            if key.kind == "Secret":
                return super().get(key)
            raise ConnectionError("connection refused")

    with caplog.at_level(logging.ERROR, logger="pdserve.operator.webhooks"):
        url = await start(None, Down())
    assert [r.getMessage() for r in caplog.records] == ["ca_bundle_failed"] * 3
    async with httpx.AsyncClient(verify=False) as client:
        assert (await client.get(f"{url}/healthz")).status_code == 200


async def test_a_cert_dir_is_served_and_nothing_is_injected(start: Start, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    cluster = ManagedCluster([webhook_config(), *(crd(n) for n in CRD_NAMES)])
    url = await start(str(tmp_path), cluster)
    assert cluster.writes() == 0 and cluster.calls["get"] == 0
    ctx = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(verify=ctx) as client:
        resp = await client.post(f"{url}/validate", json=admission_review(yaml.safe_load(GOOD)))
        assert resp.json()["response"]["allowed"] is True


async def test_an_unreadable_cert_dir_is_one_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"^{tmp_path}: cannot load tls.crt and tls.key: "):
        await webhooks.serve("127.0.0.1", 0, str(tmp_path))


async def test_a_port_in_use_is_one_user_error(start: Start) -> None:
    url = await start()
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(UserError, match=f"^cannot listen on 127.0.0.1:{port}: "):
        await webhooks.serve("127.0.0.1", port, "")


async def test_a_bug_of_ours_is_a_500_in_the_review_and_the_server_goes_on(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = served

    def broken(review: Any) -> dict[str, Any]:
        raise KeyError("oops")

    monkeypatch.setattr(webhooks.admission, "review_admission", broken)
    resp = await client.post("/validate", json=admission_review(yaml.safe_load(GOOD)))
    assert resp.status_code == 500
    assert resp.json()["response"] == {
        "uid": "u-1",
        "allowed": False,
        "status": {"code": 500, "message": "internal error: KeyError: 'oops'"},
    }
    monkeypatch.undo()
    again = await client.post("/validate", json=admission_review(yaml.safe_load(GOOD)))
    assert again.json()["response"]["allowed"] is True
