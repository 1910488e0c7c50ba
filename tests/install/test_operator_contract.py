"""The install's operator Deployment against the operator itself: its args parse with the
operator's own parser (both modes), its probes and ports are the ones the operator listens
on, and the webhook Secret it names is the one the operator reads; so the two cannot drift."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from pdserve import cli
from pdserve.install import manifests as m
from pdserve.operator import certs
from pdserve.operator import cli as operator_cli


def _container(cert_manager: bool) -> dict[str, Any]:
    [container] = m.deployment(cert_manager)["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict[str, Any], name: str) -> int:
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize("cert_manager", [False, True], ids=["self-signed", "cert-manager"])
def test_the_deployments_args_are_the_operators_flags(
    cert_manager: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    container = _container(cert_manager)
    command, *argv = container["args"]
    assert command == "operator"
    assert cli.main(["operator", *argv, "--no-such-flag"]) == 2  # dispatched to its parser,
    assert "unrecognized arguments: --no-such-flag\n" in capsys.readouterr().err  # the rest ok
    args = operator_cli.parser().parse_args(argv)
    operator_cli._check(args)
    assert args.cert_manager is cert_manager
    assert args.webhook_cert_dir is None  # the Secret, not a mounted folder

    assert args.webhook_port == _port(container, "webhook") == m.WEBHOOK_PORT
    health = urlsplit(args.health)
    assert args.health == operator_cli.parser().get_default("health")
    assert health.port == _port(container, "health") == m.HEALTH_PORT
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": health.path, "port": "health"}


def test_the_webhook_service_reaches_the_operators_webhook_port() -> None:
    [port] = m.webhook_service()["spec"]["ports"]
    assert port["targetPort"] == "webhook"
    assert m.webhook_service()["metadata"]["name"] == certs.SERVICE


@pytest.mark.parametrize("cert_manager", [False, True], ids=["self-signed", "cert-manager"])
def test_the_operator_reads_the_secret_in_its_own_namespace(cert_manager: bool) -> None:
    dep = m.deployment(cert_manager)
    env = {e["name"]: e for e in _container(cert_manager)["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert dep["metadata"]["namespace"] == certs.DEFAULT_NAMESPACE
    assert m.WEBHOOK_TLS_SECRET == certs.SECRET


def test_cert_managers_certificate_is_the_secret_and_names_the_operator_reads() -> None:
    [certificate] = [c for c in m.certificates() if c["kind"] == "Certificate"]
    assert certificate["spec"]["secretName"] == certs.SECRET
    names = certs.dns_names(certs.DEFAULT_NAMESPACE)
    assert certificate["spec"]["dnsNames"] == [
        n for n in names if n.endswith(".svc") or ".svc." in n
    ]
