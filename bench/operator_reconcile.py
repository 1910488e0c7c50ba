"""Operator benchmark: one process reconciles 500 services against a recorded cluster.

    .venv/bin/python bench/operator_reconcile.py [--services 500]

Half the services are P/D with the managed router, half single-pool; their children's
states (Deployments available, Gateway programmed, HTTPRoute and InferencePool accepted)
are recorded before the first pass, so status is judged in full. Prints CPU seconds
(time.process_time) of the first pass (everything applied, certificates made, status
written) and of a second pass with no change (reads only: it must write nothing), against
the target, and a same-run anchor: resolve + render of the same services, the pure work
no reconcile can skip.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kubefake import RecordedCluster
from pdserve.api.loader import parse
from pdserve.api.resolve import resolve
from pdserve.kube import Key
from pdserve.operator.reconcile import reconcile
from pdserve.render import names, render

TARGET = 30.0  # CPU seconds for 500 services, first pass
NOW = datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC)
RESOURCES = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
AVAILABLE = {
    "replicas": 1,
    "readyReplicas": 1,
    "availableReplicas": 1,
    "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
}
ACCEPTED = {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}
GATEWAY = {"name": "kserve-ingress-gateway", "namespace": "kserve"}


class IndexedCluster(RecordedCluster):
    """The recorded cluster with lists indexed by kind and namespace, as an API server's
    are: the plain one scans every object per list, which would time the fake, not us."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str, str | None], set[Key]] = defaultdict(set)
        super().__init__()

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = super().put(obj)
        key = Key.of(out)
        self.index[(key.api_version, key.kind, key.namespace)].add(key)
        return out

    def delete(self, key: Key) -> None:
        super().delete(key)
        for keys in self.index.values():
            keys.intersection_update(self.objects.keys())

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        self.calls["list"] += 1
        want = (labels or {}).items()
        out = []
        for key in self.index.get((api_version, kind, namespace), ()):
            obj = self.objects[key]
            if want <= (obj["metadata"].get("labels") or {}).items():
                out.append(copy.deepcopy(obj))
        return out


def manifest(i: int) -> dict[str, Any]:
    pd = i % 2 == 0
    spec: dict[str, Any] = {
        "model": {"uri": "hf://facebook/opt-125m", "name": "opt"},
        "template": {"containers": [{"name": "main", "resources": RESOURCES}]},
    }
    if pd:
        spec["router"] = {"scheduler": {}, "route": {}, "gateway": {}}
        spec["prefill"] = {"template": {"containers": [{"name": "main", "resources": RESOURCES}]}}
    return {
        "apiVersion": "serving.kserve.io/v1alpha2",
        "kind": "LLMInferenceService",
        "metadata": {"name": f"svc-{i:04d}", "namespace": f"team-{i % 25:02d}", "uid": f"u{i}"},
        "spec": spec,
    }


def recorded_states(svc: dict[str, Any]) -> list[dict[str, Any]]:
    name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
    meta = {"namespace": ns}
    deployments = [names.workload(name)]
    out = []
    if "prefill" in svc["spec"]:
        deployments += [names.workload(name, prefill=True), names.scheduler(name)]
        parents = {"parents": [{"parentRef": GATEWAY, **ACCEPTED}]}
        out += [
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {**meta, "name": names.http_route(name)},
                "status": parents,
            },
            {
                "apiVersion": "inference.networking.k8s.io/v1",
                "kind": "InferencePool",
                "metadata": {**meta, "name": names.inference_pool(name)},
                "status": parents,
            },
        ]
    out += [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "name": d},
            "status": AVAILABLE,
        }
        for d in deployments
    ]
    return out


def build(n: int) -> tuple[IndexedCluster, list[Key]]:
    cluster = IndexedCluster()
    cluster.put(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": GATEWAY,
            "status": {
                "addresses": [{"type": "IPAddress", "value": "10.0.0.7"}],
                "conditions": [{"type": "Programmed", "status": "True"}],
            },
        }
    )
    keys = []
    for i in range(n):
        svc = manifest(i)
        keys.append(Key.of(cluster.put(svc)))
        for doc in recorded_states(svc):
            cluster.put(doc)
    return cluster, keys


def one_pass(cluster: IndexedCluster, keys: list[Key]) -> float:
    t = time.process_time()
    for key in keys:
        reconcile(cluster, copy.deepcopy(cluster.objects[key]), NOW)
    return time.process_time() - t


def anchor(cluster: IndexedCluster, keys: list[Key]) -> float:
    t = time.process_time()
    for key in keys:
        svc = cluster.objects[key]
        parsed = parse(copy.deepcopy(svc), str(key))
        render(resolve(parsed, (), key.namespace), key.namespace, ("crt", "key"))  # type: ignore[arg-type]
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=500)
    args = ap.parse_args()
    cluster, keys = build(args.services)
    base = anchor(cluster, keys)
    first = one_pass(cluster, keys)
    writes_first = cluster.writes()
    cluster.calls.clear()
    second = one_pass(cluster, keys)
    writes_second = cluster.writes()
    reads = cluster.calls["list"] + cluster.calls["get"]
    ready = sum(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in cluster.objects[k]["status"]["conditions"]
        )
        for k in keys
    )
    n = len(keys)
    print(
        f"{n} services ({(n + 1) // 2} P/D with router, {n // 2} single): first pass "
        f"{first:.2f} s CPU ({writes_first} writes; target < {TARGET:.0f} s: "
        f"{'met' if first < TARGET else 'missed'}); no-change second pass {second:.2f} s CPU "
        f"({writes_second} writes, {reads} reads); Ready: {ready}/{n}"
    )
    print(
        f"anchor, resolve + render of the same services: {base:.2f} s CPU; ratio first pass "
        f"{first / base:.1f}x, second pass {second / base:.1f}x"
    )


if __name__ == "__main__":
    main()
