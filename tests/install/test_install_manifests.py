"""The operator's install set: every object valid for Kubernetes 1.33, RBAC that covers what
the operator renders and grants (and no more), and `pdserve install` printing it all."""

from __future__ import annotations

import glob
import json
import subprocess
from typing import Any

import pytest
import yaml
from installkit import check_object

from pdserve import __version__, api, render
from pdserve.api.resolve import presets as builtin_presets
from pdserve.install import manifests as m
from pdserve.render.router import epp_rbac
from pdserve.render.workload import workload_rbac
from testkit import PDSERVE, REPO

CERT_MANAGER_KINDS = {"Issuer", "Certificate"}
# The resource of each kind render emits (for the RBAC check).
PLURALS = {
    "Deployment": "deployments",
    "HTTPRoute": "httproutes",
    "InferencePool": "inferencepools",
    "InferenceModel": "inferencemodels",
    "LeaderWorkerSet": "leaderworkersets",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Secret": "secrets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ScaledObject": "scaledobjects",
}
EXAMPLE = "examples/pd-smollm2.yaml"
WRITE = {"get", "list", "watch", "create", "update", "patch", "delete"}


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


def _allowed(group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule["apiGroups"]
        and resource in rule["resources"]
        and verb in rule["verbs"]
        and "resourceNames" not in rule
        for rule in m.rules()
    )


@pytest.mark.parametrize("cert_manager", [False, True], ids=["self-signed", "cert-manager"])
def test_every_object_is_valid(cert_manager: bool) -> None:
    objs = m.install(cert_manager)
    assert len({key(o) for o in objs}) == len(objs)
    for obj in objs:
        if obj["kind"] in CERT_MANAGER_KINDS:
            assert obj["apiVersion"] == "cert-manager.io/v1" and cert_manager
        else:
            check_object(obj)
    kinds = [o["kind"] for o in objs]
    assert kinds.index("Namespace") == 0
    assert kinds.index("CustomResourceDefinition") < kinds.index("LLMInferenceServiceConfig")


@pytest.mark.parametrize("roles", [epp_rbac, workload_rbac], ids=["epp", "workload"])
def test_operator_holds_every_permission_it_grants(roles: Any) -> None:
    """RBAC lets a subject create a Role only with permissions it holds itself (else it
    would need `escalate`), and bind it only then (else `bind`)."""
    [role] = [o for o in roles("svc", "ns") if o["kind"] == "Role"]
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert _allowed(group, resource, verb), (group, resource, verb)


def test_operator_may_manage_everything_render_emits() -> None:
    kinds = set()
    paths = [*glob.glob(str(REPO / "tests/render/data/*.yaml")), str(REPO / EXAMPLE)]
    for path in paths:
        for service in api.resolve_file(path):
            objs = render.render(service, certs=("c", "k"))
            kinds |= {(o["apiVersion"], o["kind"]) for o in objs}
    assert kinds
    for api_version, kind in sorted(kinds):
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        for verb in sorted(WRITE):
            assert _allowed(group, PLURALS[kind], verb), (api_version, kind, verb)


def test_rbac_grants_no_wildcards_escalate_or_bind() -> None:
    for rule in m.rules():
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    assert not _allowed("", "pods", "delete")  # it reads pods, never deletes them
    assert not _allowed("gateway.networking.k8s.io", "gateways", "create")
    assert _allowed("serving.kserve.io", "llminferenceservices/status", "patch")
    assert _allowed("coordination.k8s.io", "leases", "update")
    assert _allowed("keda.sh", "scaledobjects", "create")


def test_operator_deployment() -> None:
    dep = m.deployment()
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == f"ghcr.io/pdserve/pdserve:{__version__}"
    assert container["args"] == ["operator", "--webhook-port", "9443"]
    assert m.deployment(cert_manager=True)["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "operator",
        "--webhook-port",
        "9443",
        "--cert-manager",
    ]
    assert dep["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == m.service_account()["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ports == {"webhook": 9443, "health": 8080}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    service = m.webhook_service()
    assert service["metadata"]["name"] == "pdserve-webhook"
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]


def test_validating_webhook() -> None:
    vwc = m.validating_webhook()
    hooks = {h["rules"][0]["resources"][0]: h for h in vwc["webhooks"]}
    assert sorted(hooks) == ["llminferenceserviceconfigs", "llminferenceservices"]
    for hook in hooks.values():
        assert hook["clientConfig"]["service"] == {
            "name": "pdserve-webhook",
            "namespace": "pdserve-system",
            "path": "/validate",
            "port": 443,
        }
        assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
        assert hook["rules"][0]["apiVersions"] == ["v1alpha1", "v1alpha2"]
        assert (hook["failurePolicy"], hook["sideEffects"]) == ("Fail", "None")
        assert hook["admissionReviewVersions"] == ["v1"]
        assert "caBundle" not in hook["clientConfig"]  # the operator patches it in
    # The presets install before the operator serves its webhook: it skips them.
    assert "objectSelector" not in hooks["llminferenceservices"]
    selector = hooks["llminferenceserviceconfigs"]["objectSelector"]
    assert selector == {"matchExpressions": [{"key": m.PRESET_LABEL, "operator": "DoesNotExist"}]}


def test_cert_manager_mode() -> None:
    objs = {key(o): o for o in m.install(cert_manager=True)}
    inject = "pdserve-system/pdserve-webhook-cert"
    annotated = [
        k for k, o in objs.items() if (o["metadata"].get("annotations") or {}).get(m.INJECT_CA)
    ]
    assert sorted(annotated) == sorted(
        [
            ("CustomResourceDefinition", "", "llminferenceserviceconfigs.serving.kserve.io"),
            ("CustomResourceDefinition", "", "llminferenceservices.serving.kserve.io"),
            ("ValidatingWebhookConfiguration", "", "pdserve-validating-webhook"),
        ]
    )
    assert all(objs[k]["metadata"]["annotations"][m.INJECT_CA] == inject for k in annotated)
    cert = objs[("Certificate", "pdserve-system", "pdserve-webhook-cert")]
    assert cert["spec"]["secretName"] == m.WEBHOOK_TLS_SECRET
    assert "pdserve-webhook.pdserve-system.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"] == {"kind": "Issuer", "name": "pdserve-selfsigned"}
    assert objs[("Issuer", "pdserve-system", "pdserve-selfsigned")]["spec"] == {"selfSigned": {}}
    plain = {key(o) for o in m.install()}
    assert set(objs) - plain == {
        ("Issuer", "pdserve-system", "pdserve-selfsigned"),
        ("Certificate", "pdserve-system", "pdserve-webhook-cert"),
    }


def test_presets_are_the_built_in_ones_in_the_system_namespace() -> None:
    presets = m.presets()
    assert [p["metadata"]["name"] for p in presets] == sorted(builtin_presets())
    for preset in presets:
        assert preset["apiVersion"] == "serving.kserve.io/v1alpha2"  # stored: no conversion
        assert preset["metadata"]["namespace"] == "pdserve-system"
        assert preset["metadata"]["labels"][m.PRESET_LABEL] == "true"
        assert preset["spec"] == builtin_presets()[preset["metadata"]["name"]]["spec"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PDSERVE, "install", *args], capture_output=True, text=True)


def test_install_prints_yaml_and_json() -> None:
    out = _cli("-o", "yaml")
    assert out.returncode == 0, out.stderr
    assert [d for d in yaml.safe_load_all(out.stdout) if d] == m.install()
    assert _cli().stdout == out.stdout  # yaml is the default
    out = _cli("-o", "json", "--cert-manager")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "List")
    assert doc["items"] == m.install(cert_manager=True)


@pytest.mark.parametrize(
    "args",
    [["-o", "xml"], ["--nope"], ["extra"], ["-o"]],
    ids=["xml", "unknown", "extra", "no-value"],
)
def test_bad_flags_are_one_line_exit_2(args: list[str]) -> None:
    out = _cli(*args)
    assert (out.returncode, out.stdout) == (2, "")
    assert "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("pdserve install: "), line
