"""`pdserve preflight FILE`: does this cluster have what THAT manifest needs?

The needs come from the objects the manifest renders to (`pdserve.render`), so preflight
checks exactly what applying it would use, one line each:

- the CRD of every non-built-in kind it renders, serving the version it renders:
  HTTPRoute (and Gateway, its parent's kind), the InferencePool of the group its version
  renders (inference.networking.x-k8s.io for v1alpha1, inference.networking.k8s.io for
  v1alpha2) and v1alpha1's InferenceModel, LeaderWorkerSet when multi-node, KEDA's
  ScaledObject when scaling asks for KEDA; and ours, llminferenceservices.serving.kserve.io;
- the custom metrics API (APIService v1beta1.custom.metrics.k8s.io) when an HPA scales on
  a pods metric;
- each Gateway an HTTPRoute names as parent (by default kserve/kserve-ingress-gateway);
- per pod template, a node whose allocatable covers the pod's extended resources
  (nvidia.com/gpu, rdma/roce_gdr...: the containers' limits summed, init containers' at
  their largest), all on the same node;
- each Multus NetworkAttachmentDefinition the pods' `k8s.v1.cni.cncf.io/networks`
  annotation names.

`check` is pure over `pdserve.kube.Objects`; `main` prints "ok ..." / "missing ..." lines and
exits 1 when something is missing, 0 when all is there, 2 for a bad manifest or no cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from pdserve.kube import Key, Objects

CRD = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
APISERVICE = ("apiregistration.k8s.io/v1", "APIService")
CUSTOM_METRICS = "v1beta1.custom.metrics.k8s.io"
NAD = ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")
NETWORKS = "k8s.v1.cni.cncf.io/networks"
GATEWAY_API = "gateway.networking.k8s.io/v1"
SERVICE_CRD = "llminferenceservices.serving.kserve.io"
BUILT_IN = {"", "apps", "batch", "autoscaling", "policy", "rbac.authorization.k8s.io"}


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    detail: str = ""

    def __str__(self) -> str:
        status = "ok" if self.ok else "missing"
        return f"{status:<8} {self.what}" + (f" ({self.detail})" if self.detail else "")


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _crd(objects: Objects, plural_group: str, version: str) -> Finding:
    what = f"CRD {plural_group} {version}"
    crd = objects.get(Key(*CRD, None, plural_group))
    if crd is None:
        return Finding(False, what)
    served = [v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("served")]
    if version not in served:
        return Finding(False, what, f"serves {', '.join(served) or 'no version'}")
    return Finding(True, what)


def _pods(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, pod template) of every workload the manifest renders."""
    out = []
    for obj in objs:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Deployment":
            out.append((name, obj["spec"]["template"]))
        elif obj["kind"] == "LeaderWorkerSet":
            group = obj["spec"]["leaderWorkerTemplate"]
            out.append((f"{name} leader", group["leaderTemplate"]))
            out.append((f"{name} worker", group["workerTemplate"]))
    return out


def _extended(limits: dict[str, Any]) -> dict[str, int]:
    """The extended resources (a domain-prefixed name, e.g. nvidia.com/gpu) and their count."""
    out = {}
    for name, value in (limits or {}).items():
        if "/" in name and not name.startswith(("hugepages-", "kubernetes.io/")):
            try:
                out[name] = int(str(value))
            except ValueError:
                continue
    return out


def pod_needs(pod: dict[str, Any]) -> dict[str, int]:
    """Extended resources one pod needs: its containers' and sidecars' (restartable init
    containers') limits summed, or the largest plain init container's, whichever is more."""
    spec = pod.get("spec") or {}
    total: dict[str, int] = {}
    largest_init: dict[str, int] = {}
    containers = list(spec.get("containers") or [])
    for c in spec.get("initContainers") or []:
        if c.get("restartPolicy") == "Always":
            containers.append(c)
        else:
            for k, v in _extended((c.get("resources") or {}).get("limits") or {}).items():
                largest_init[k] = max(largest_init.get(k, 0), v)
    for c in containers:
        for k, v in _extended((c.get("resources") or {}).get("limits") or {}).items():
            total[k] = total.get(k, 0) + v
    for k, v in largest_init.items():
        total[k] = max(total.get(k, 0), v)
    return {k: v for k, v in total.items() if v > 0}


def _allocatable(node: dict[str, Any], resource: str) -> int:
    value = ((node.get("status") or {}).get("allocatable") or {}).get(resource, "0")
    try:
        return int(str(value))
    except ValueError:
        return 0


def _networks(value: str, namespace: str) -> list[tuple[str, str]]:
    """(namespace, name) of each network in a Multus annotation: a JSON list of objects or
    a comma-separated `[namespace/]name[@interface]` list."""
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            return []
        return [
            (str(i.get("namespace") or namespace), str(i["name"]))
            for i in items
            if isinstance(i, dict) and i.get("name")
        ]
    out = []
    for item in value.split(","):
        item = item.strip().split("@", 1)[0]
        if item:
            ns, _, name = item.rpartition("/")
            out.append((ns or namespace, name))
    return out


def check(objects: Objects, service: Any, namespace: str | None = None) -> list[Finding]:
    """What the (merged) service needs of the cluster, each found or missing, in order."""
    from pdserve.api.convert import V1ALPHA2
    from pdserve.api.models import dump
    from pdserve.render import render

    svc = service if isinstance(service, dict) else dump(service)
    written = svc.get("apiVersion", "") if isinstance(service, dict) else service.written_as
    ns = namespace or svc["metadata"].get("namespace") or "default"
    objs = render(service, ns)
    findings: list[Finding] = [_crd(objects, SERVICE_CRD, _group_version(written or V1ALPHA2)[1])]
    kinds: dict[tuple[str, str], str] = {}
    for obj in objs:
        group, version = _group_version(obj["apiVersion"])
        if group not in BUILT_IN:
            kinds.setdefault((group, obj["kind"]), version)
        if obj["kind"] == "HTTPRoute":
            kinds.setdefault(("gateway.networking.k8s.io", "Gateway"), "v1")
    for (group, kind), version in kinds.items():
        findings.append(_crd(objects, f"{kind.lower()}s.{group}", version))
    if any(
        m.get("type") == "Pods"
        for o in objs
        if o["kind"] == "HorizontalPodAutoscaler"
        for m in o["spec"].get("metrics") or []
    ):
        found = objects.get(Key(*APISERVICE, None, CUSTOM_METRICS)) is not None
        findings.append(Finding(found, f"APIService {CUSTOM_METRICS}", "for the HPA's metric"))
    for route in (o for o in objs if o["kind"] == "HTTPRoute"):
        for ref in route["spec"].get("parentRefs") or []:
            if ref.get("kind", "Gateway") == "Gateway":
                key = Key(GATEWAY_API, "Gateway", ref.get("namespace") or ns, ref["name"])
                findings.append(Finding(objects.get(key) is not None, str(key)))
    pods = _pods(objs)
    nodes: list[dict[str, Any]] | None = None
    for label, pod in pods:
        needs = pod_needs(pod)
        if not needs:
            continue
        if nodes is None:
            nodes = objects.list("v1", "Node")
        fit = [n for n in nodes if all(_allocatable(n, r) >= k for r, k in needs.items())]
        what = f"nodes for {label}: " + ", ".join(f"{r}={k}" for r, k in sorted(needs.items()))
        detail = f"{len(fit)} of {len(nodes)} node(s) have it allocatable"
        findings.append(Finding(bool(fit), what, detail))
    for _, pod in pods:
        annotation = ((pod.get("metadata") or {}).get("annotations") or {}).get(NETWORKS)
        for net_ns, name in _networks(annotation or "", ns):
            key = Key(*NAD, net_ns, name)
            findings.append(Finding(objects.get(key) is not None, str(key)))
    return list(dict.fromkeys(findings))  # each once, in order


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pdserve preflight")
    ap.add_argument("file")
    ap.add_argument("--namespace", "-n", help="namespace the manifest would run in")
    ap.add_argument("--config-dir", help="folder of LLMInferenceServiceConfig files")
    args = ap.parse_args(argv[1:])
    from pdserve import kube
    from pdserve.api import ManifestError, resolve_file

    try:
        services = resolve_file(args.file, args.config_dir, args.namespace)
    except ManifestError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    try:
        objects: Objects = kube.ApiObjects()
    except Exception as err:  # no kubeconfig, no in-cluster account: one line, not a trace
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"pdserve preflight: no cluster to check: {first}", file=sys.stderr)
        return 2
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    findings: list[Finding] = []
    try:
        for service in services:
            findings += [f for f in check(objects, service, args.namespace) if f not in findings]
    except (ApiException, HTTPError, OSError) as err:  # unreachable, or refuses us
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"pdserve preflight: cannot read the cluster: {first}", file=sys.stderr)
        return 2
    for finding in findings:
        print(finding)
    return 0 if all(f.ok for f in findings) else 1
