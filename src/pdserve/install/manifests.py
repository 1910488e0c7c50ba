"""The operator's install set: what `pdserve install -o yaml` prints and `config/` holds.

Namespace `pdserve-system`; the CRDs (`install/crd.py`); the operator's ServiceAccount,
ClusterRole and binding; its Deployment (two replicas, one leader by a coordination.k8s.io
Lease) serving the conversion and validating webhooks on 9443 behind the `pdserve-webhook`
Service; the ValidatingWebhookConfiguration; and the well-known presets as
LLMInferenceServiceConfig objects in `pdserve-system`, where KServe looks for them.

Webhook certificates, the contract with the operator: it reads them from the Secret
`pdserve-webhook-tls` in its namespace. By default it makes that Secret itself (a
self-signed CA and serving certificate, once, for every replica) and patches the CA into
the CRDs' conversion webhook and the ValidatingWebhookConfiguration. With `cert_manager`,
a cert-manager self-signed Issuer and Certificate make the Secret, the
`cert-manager.io/inject-ca-from` annotations have cert-manager inject the CA, and the
operator runs with `--cert-manager` so it leaves both alone.

The presets are stored in v1alpha2 (the storage version, so creating them needs no
conversion webhook) and carry the label `pdserve.io/preset`, which the validating webhook
skips, so that they install before the operator first runs.
"""

from __future__ import annotations

import copy
from typing import Any

from pdserve import __version__, wire
from pdserve.api.resolve import presets as builtin_presets
from pdserve.install import crd
from pdserve.install.crd import CONFIG_PLURAL, GROUP, NAMESPACE, SERVICE_PLURAL, WEBHOOK_SERVICE

Obj = dict[str, Any]
NAME = "pdserve-operator"
IMAGE = f"ghcr.io/pdserve/pdserve:{__version__}"
WEBHOOK_CONFIG = "pdserve-validating-webhook"
WEBHOOK_TLS_SECRET = "pdserve-webhook-tls"
WEBHOOK_PORT = 9443
HEALTH_PORT = 8080  # kopf's liveness endpoint: --liveness=http://0.0.0.0:8080/healthz
HEALTH_PATH = "/healthz"
VALIDATE_PATH = "/validate"
PRESET_LABEL = "pdserve.io/preset"
ISSUER = "pdserve-selfsigned"
CERTIFICATE = "pdserve-webhook-cert"
INJECT_CA = "cert-manager.io/inject-ca-from"
LABELS = {"app.kubernetes.io/name": "pdserve", "app.kubernetes.io/part-of": "pdserve"}
SELECTOR = {"app.kubernetes.io/name": "pdserve", "app.kubernetes.io/component": "operator"}

_READ = ["get", "list", "watch"]
_WRITE = ["get", "list", "watch", "create", "update", "patch", "delete"]


def _meta(name: str, namespaced: bool = True, **extra: Any) -> Obj:
    meta: Obj = {"name": name}
    if namespaced:
        meta["namespace"] = NAMESPACE
    meta["labels"] = dict(LABELS)
    meta.update(extra)
    return meta


def namespace() -> Obj:
    meta = _meta(NAMESPACE, namespaced=False)
    # The operator's pods meet the restricted Pod Security Standard.
    meta["labels"]["pod-security.kubernetes.io/enforce"] = "restricted"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def service_account() -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME)}


def rules() -> list[Obj]:
    """What the operator does, and no more. It holds every permission of the Roles it
    renders for a service's EPP and workload (render/router.py epp_rbac, render/workload.py
    workload_rbac), so Kubernetes lets it grant them without `escalate` or `bind`."""
    pools = [wire.POOL_GROUP, wire.POOL_GROUP_GA]
    return [
        # Its own resources: reconciled (finalizers, kopf's progress annotations), status.
        {"apiGroups": [GROUP], "resources": [SERVICE_PLURAL], "verbs": [*_READ, "update", "patch"]},
        {
            "apiGroups": [GROUP],
            "resources": [f"{SERVICE_PLURAL}/status"],
            "verbs": ["get", "update", "patch"],
        },
        {"apiGroups": [GROUP], "resources": [f"{SERVICE_PLURAL}/finalizers"], "verbs": ["update"]},
        {"apiGroups": [GROUP], "resources": [CONFIG_PLURAL], "verbs": _READ},
        # What render emits for a service (secrets: also the webhook's own Secret,
        # pdserve-webhook-tls, that the first replica makes: operator/certs.py).
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _WRITE},
        {
            "apiGroups": [""],
            "resources": ["services", "secrets", "serviceaccounts", "configmaps"],
            "verbs": _WRITE,
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": _READ},
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["roles", "rolebindings"],
            "verbs": _WRITE,
        },
        {"apiGroups": pools, "resources": ["inferencepools", "inferencemodels"], "verbs": _WRITE},
        {"apiGroups": pools, "resources": ["inferenceobjectives"], "verbs": _READ},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _READ},
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": _WRITE},
        {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": _READ},
        {
            "apiGroups": ["leaderworkerset.x-k8s.io"],
            "resources": ["leaderworkersets"],
            "verbs": _WRITE,
        },
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": _WRITE},
        {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": _WRITE},
        # Events about what it did (kopf posts core ones).
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        # Leader election among its replicas.
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "update", "patch"],
        },
        # kopf's scanning of resources and namespaces.
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        # Injecting its self-signed CA into its CRDs' conversion webhook and its own
        # validating webhook (and no other).
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": [f"{SERVICE_PLURAL}.{GROUP}", f"{CONFIG_PLURAL}.{GROUP}"],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": [WEBHOOK_CONFIG],
            "verbs": ["get", "patch"],
        },
    ]


def cluster_role() -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta(NAME, namespaced=False),
        "rules": rules(),
    }


def cluster_role_binding() -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(NAME, namespaced=False),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
    }


def deployment(cert_manager: bool = False) -> Obj:
    args = ["operator", "--webhook-port", str(WEBHOOK_PORT)]
    if cert_manager:
        args.append("--cert-manager")
    probe = {"httpGet": {"path": HEALTH_PATH, "port": "health"}, "periodSeconds": 10}
    field = {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    container: Obj = {
        "name": "operator",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [
            {"name": "POD_NAME", **field},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "ports": [
            {"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {**copy.deepcopy(probe), "initialDelaySeconds": 15},
        "readinessProbe": {**copy.deepcopy(probe), "initialDelaySeconds": 5},
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    labels = {**LABELS, **SELECTOR}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(NAME, labels=labels),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": dict(SELECTOR)},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": dict(SELECTOR)},
                                    },
                                }
                            ]
                        }
                    },
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def webhook_service() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(WEBHOOK_SERVICE),
        "spec": {
            "selector": dict(SELECTOR),
            "ports": [
                {
                    "name": "webhook",
                    "port": crd.WEBHOOK_PORT,
                    "targetPort": "webhook",
                    "protocol": "TCP",
                }
            ],
        },
    }


def _inject(obj: Obj) -> Obj:
    obj["metadata"].setdefault("annotations", {})[INJECT_CA] = f"{NAMESPACE}/{CERTIFICATE}"
    return obj


def validating_webhook(cert_manager: bool = False) -> Obj:
    def hook(plural: str, object_selector: Obj | None = None) -> Obj:
        out: Obj = {
            "name": f"{plural}.validate.pdserve.io",
            "clientConfig": {
                "service": {
                    "name": WEBHOOK_SERVICE,
                    "namespace": NAMESPACE,
                    "path": VALIDATE_PATH,
                    "port": crd.WEBHOOK_PORT,
                }
            },
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "apiVersions": list(crd.VERSIONS),
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [plural],
                    "scope": "Namespaced",
                }
            ],
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }
        if object_selector is not None:
            out["objectSelector"] = object_selector
        return out

    not_preset = {"matchExpressions": [{"key": PRESET_LABEL, "operator": "DoesNotExist"}]}
    obj: Obj = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": _meta(WEBHOOK_CONFIG, namespaced=False),
        "webhooks": [hook(SERVICE_PLURAL), hook(CONFIG_PLURAL, not_preset)],
    }
    return _inject(obj) if cert_manager else obj


def crds(cert_manager: bool = False) -> list[Obj]:
    out = crd.crds()
    return [_inject(c) for c in out] if cert_manager else out


def certificates() -> list[Obj]:
    """cert-manager's self-signed Issuer and the webhook's serving Certificate."""
    host = f"{WEBHOOK_SERVICE}.{NAMESPACE}.svc"
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": _meta(ISSUER),
            "spec": {"selfSigned": {}},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": _meta(CERTIFICATE),
            "spec": {
                "secretName": WEBHOOK_TLS_SECRET,
                "dnsNames": [host, f"{host}.cluster.local"],
                "issuerRef": {"kind": "Issuer", "name": ISSUER},
            },
        },
    ]


def presets() -> list[Obj]:
    """The well-known LLMInferenceServiceConfigs, in pdserve-system, sorted by name."""
    out = []
    for name, doc in sorted(builtin_presets().items()):
        obj = copy.deepcopy(doc)
        meta = obj["metadata"]
        meta["namespace"] = NAMESPACE
        meta["labels"] = {**(meta.get("labels") or {}), **LABELS, PRESET_LABEL: "true"}
        assert meta["name"] == name
        out.append(obj)
    return out


def install(cert_manager: bool = False) -> list[Obj]:
    """Every object, in the order `kubectl apply` needs them."""
    return [
        namespace(),
        *crds(cert_manager),
        service_account(),
        cluster_role(),
        cluster_role_binding(),
        *(certificates() if cert_manager else []),
        webhook_service(),
        deployment(cert_manager),
        validating_webhook(cert_manager),
        *presets(),
    ]
