"""The pools: Deployments (or LeaderWorkerSets when multi-node), their Service, TLS secret
and the RBAC the routing sidecar needs to watch its InferencePool."""

from __future__ import annotations

import copy
from typing import Any

from pdserve import wire
from pdserve.render import names, placement

MODEL_DIR = "/mnt/models"
STORAGE_INITIALIZER = "kserve/storage-initializer:v0.16.0"
ALL2ALL_BACKEND = "deepep_high_throughput"
NETWORK_ANNOTATION = "k8s.v1.cni.cncf.io/networks"


def meta(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


def model_storage(pod: dict[str, Any], uri: str) -> None:
    """Make the model appear at /mnt/models in the main container, by URI scheme."""
    volume: dict[str, Any]
    if uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://") :].partition("/")
        volume = {
            "name": "model-volume",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        mount = {"name": "model-volume", "mountPath": MODEL_DIR, "readOnly": True}
        if sub:
            mount["subPath"] = sub
    elif uri.startswith("file://") or "://" not in uri:
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        volume = {"name": "model-volume", "hostPath": {"path": path, "type": "Directory"}}
        mount = {"name": "model-volume", "mountPath": MODEL_DIR, "readOnly": True}
    else:  # hf://, s3://, oci://, builtin://: downloaded by the storage initializer
        volume = {"name": "kserve-provision-location", "emptyDir": {}}
        mount = {"name": "kserve-provision-location", "mountPath": MODEL_DIR, "readOnly": True}
        pod.setdefault("initContainers", []).insert(
            0,
            {
                "name": "storage-initializer",
                "image": STORAGE_INITIALIZER,
                "args": [uri, MODEL_DIR],
                "volumeMounts": [{"name": "kserve-provision-location", "mountPath": MODEL_DIR}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "100Mi"},
                    "limits": {"cpu": "1", "memory": "1Gi"},
                },
            },
        )
    pod.setdefault("volumes", []).append(volume)
    for c in pod.get("containers", []):
        if c.get("name") == "main":
            c.setdefault("volumeMounts", []).append(mount)


def _parallelism(pod: dict[str, Any], par: dict[str, Any], multinode: bool) -> None:
    """Single-node tensor/pipeline parallel and MoE expert parallel become engine args."""
    for c in pod.get("containers", []):
        if c.get("name") != "main" or c.get("command", [])[:1] == ["/bin/sh"]:
            continue
        args = c.setdefault("args", [])
        if par.get("tensor") and "--tensor-parallel-size" not in args:
            args += ["--tensor-parallel-size", str(par["tensor"])]
        if par.get("pipeline") and "--pipeline-parallel-size" not in args:
            args += ["--pipeline-parallel-size", str(par["pipeline"])]
        if par.get("expert") and "--enable-expert-parallel" not in args:
            args.append("--enable-expert-parallel")
    if par.get("expert") and multinode:
        for c in pod.get("containers", []):
            if c.get("name") == "main":
                c.setdefault("env", []).append(
                    {"name": "VLLM_ALL2ALL_BACKEND", "value": ALL2ALL_BACKEND}
                )
                if c.get("command", [])[:1] == ["/bin/sh"]:
                    c["args"] = [c["args"][0].rstrip() + " \\\n  --enable-expert-parallel\n"]


def pod_template(
    service: dict[str, Any], workload: dict[str, Any], pod_key: str, labels: dict[str, str]
) -> dict[str, Any]:
    spec = service["spec"]
    pod = copy.deepcopy(workload.get(pod_key) or {})
    model_storage(pod, spec["model"]["uri"])  # leaders and workers alike read /mnt/models
    _parallelism(
        pod,
        workload.get("parallelism") or spec.get("parallelism") or {},
        bool(workload.get("worker")),
    )
    pod.setdefault("serviceAccountName", names.workload_sa(service["metadata"]["name"]))
    annotations = dict(workload.get("annotations") or {})
    network = (service["metadata"].get("annotations") or {}).get(NETWORK_ANNOTATION)
    if network:
        annotations.setdefault(NETWORK_ANNOTATION, network)
    pod_meta: dict[str, Any] = {"labels": labels}
    if annotations:
        pod_meta["annotations"] = annotations
    return {"metadata": pod_meta, "spec": pod}


def serving_labels(workload: dict[str, Any], ours: dict[str, str]) -> dict[str, str]:
    """The user's labels over ours, as KServe applies `labels` after its own: that is how a
    service without a pool of its own puts its pods in another service's InferencePool.
    The API refuses a user label that would break a selector of the service's own."""
    return {**ours, **(workload.get("labels") or {})}


def worker_pod_labels(workload: dict[str, Any], ours: dict[str, str]) -> dict[str, str]:
    """Workers run headless ranks with no HTTP server, so no user label may give them a key
    a pool or Service selects by (KServe's would): they keep ours and only the others."""
    user = {
        k: v for k, v in (workload.get("labels") or {}).items() if k not in wire.SELECTOR_LABELS
    }
    return {**user, **ours}


def pool(service: dict[str, Any], prefill: bool, namespace: str) -> dict[str, Any]:
    name, spec = service["metadata"]["name"], service["spec"]
    workload = spec["prefill"] if prefill else spec
    pd = spec.get("prefill") is not None
    # under `scaling` the autoscaler owns replicas (render/scaling.py): none is rendered,
    # and the API server starts the workload at 1 until the autoscaler's first decision
    scaled = bool(workload.get("scaling"))
    replicas = workload.get("replicas", 1)
    multinode = bool(workload.get("worker"))
    ours = names.workload_labels(name, prefill, pd, multinode)
    labels = serving_labels(workload, ours)
    if not multinode:
        # selected by what the pods carry on our keys, so the selector always matches them
        selector = {k: labels[k] for k in ours}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(names.workload(name, prefill), namespace, selector),
            "spec": {
                **({} if scaled else {"replicas": replicas}),
                "selector": {"matchLabels": selector},
                "template": pod_template(service, workload, "template", labels),
            },
        }
    par = workload.get("parallelism") or {}
    size = max(1, int(par.get("data") or 1) // int(par.get("dataLocal") or 1))
    workers = names.worker_labels(name, prefill)
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": meta(names.workload(name, prefill, multinode), namespace, workers),
        "spec": {
            **({} if scaled else {"replicas": replicas}),
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": size,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": pod_template(service, workload, "template", labels),
                "workerTemplate": pod_template(
                    service, workload, "worker", worker_pod_labels(workload, workers)
                ),
            },
        },
    }
    placement.apply(lws, service, workload)
    return lws


def workload_service(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(names.workload_service(name), namespace, names.owner(name)),
        "spec": {
            "selector": names.pool_selector(name),
            "ports": [{"name": "https", "port": 8000, "targetPort": 8000, "protocol": "TCP"}],
        },
    }


def tls_secret(name: str, namespace: str, certs: tuple[str, str] | None) -> dict[str, Any]:
    """The self-signed pair the sidecar and engines mount; empty unless `certs` is given
    (the operator, or `pdserve render`, fills it)."""
    import base64

    crt, key = certs or ("", "")

    def enc(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": meta(names.tls_secret(name), namespace, names.owner(name)),
        "data": {"tls.crt": enc(crt), "tls.key": enc(key)},
    }


def rbac(
    name: str,
    namespace: str,
    rules: list[dict[str, Any]],
    sa_name: str,
    role_name: str,
    rb_name: str,
) -> list[dict[str, Any]]:
    labels = names.owner(name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(sa_name, namespace, labels),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(role_name, namespace, labels),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(rb_name, namespace, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
        },
    ]


def workload_rbac(name: str, namespace: str) -> list[dict[str, Any]]:
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": [wire.POOL_GROUP, wire.POOL_GROUP_GA],
            "resources": ["inferencepools"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    return rbac(
        name,
        namespace,
        rules,
        names.workload_sa(name),
        names.workload_role(name),
        names.workload_rb(name),
    )
