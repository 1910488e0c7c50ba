"""Recorded cluster states for the operator's tests: the service as the API serves it, the
child states under data/, and one reconcile pass with a fixed clock and fake certificates."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import yaml

from kubefake import RecordedCluster
from pdserve.kube import Key
from pdserve.operator.reconcile import Outcome, reconcile

DATA = Path(__file__).parent / "data"
RENDER_DATA = Path(__file__).parents[1] / "render" / "data"
PD_V2 = RENDER_DATA / "pd-cpu-v1alpha2.yaml"
NOW = datetime.datetime(2026, 12, 2, 0, 0, tzinfo=datetime.UTC)
NS = "llm"


class Certs:
    """Counts how often the operator made a certificate pair."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self) -> tuple[str, str]:
        self.made += 1
        return f"crt-{self.made}", f"key-{self.made}"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DATA / name).read_text()) if d]


def service(path: Path = PD_V2, name: str | None = None) -> dict[str, Any]:
    """A manifest as the API server returns it: in a namespace, with a uid and generation."""
    doc = copy.deepcopy(yaml.safe_load(path.read_text()))
    meta = doc["metadata"]
    meta["name"] = name or meta["name"]
    meta.update(namespace=NS, uid=f"svc-{meta['name']}", generation=1)
    return doc


class Harness:
    def __init__(self, svc: dict[str, Any] | None = None, *states: str) -> None:
        self.cluster = RecordedCluster()
        self.certs = Certs()
        self.key = Key.of(self.cluster.put(svc or service()))
        self.overlay(*states)

    def overlay(self, *states: str) -> None:
        """Recorded states (later files win, by object); an existing object keeps its spec
        and takes the recorded status, as when its controller reports."""
        for name in states:
            for doc in docs(name):
                key = Key.of(doc)
                have = self.cluster.objects.get(key)
                if have is not None and "status" in doc:
                    have["status"] = copy.deepcopy(doc["status"])
                else:
                    self.cluster.put(doc)

    def service(self) -> dict[str, Any]:
        obj = self.cluster.objects[self.key]
        return copy.deepcopy(obj)

    def reconcile(self, now: datetime.datetime = NOW) -> Outcome:
        return reconcile(self.cluster, self.service(), now, make_certs=self.certs)

    def reconcile_other(self, svc: dict[str, Any], now: datetime.datetime = NOW) -> Outcome:
        """Another service of the same cluster, as the API serves it now."""
        live = self.cluster.objects[Key.of(svc)]
        return reconcile(self.cluster, copy.deepcopy(live), now, make_certs=self.certs)

    def edit(self, **spec: Any) -> None:
        """A user's edit of the spec (None removes a field); the server bumps generation."""
        obj = self.cluster.objects[self.key]
        for k, v in spec.items():
            if v is None:
                obj["spec"].pop(k, None)
            else:
                obj["spec"][k] = v
        obj["metadata"]["generation"] += 1

    def kinds(self) -> set[tuple[str, str]]:
        return {(k.kind, k.name) for k in self.cluster.objects if k.namespace == NS}

    def condition(self, type_: str) -> dict[str, Any]:
        conditions = (self.service().get("status") or {}).get("conditions") or []
        found = [c for c in conditions if c["type"] == type_]
        assert found, f"no {type_} condition in {[c['type'] for c in conditions]}"
        return dict(found[0])

    def types(self) -> set[str]:
        return {c["type"] for c in self.service()["status"]["conditions"]}
