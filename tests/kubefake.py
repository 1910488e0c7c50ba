"""A recorded cluster: `pdserve.kube.Objects` over objects held in memory.

No API server runs on these machines, so reconcile and status are tested against object
states as a cluster returns them (YAML documents with their `status`), loaded into this
store. It does what the API server does that the operator relies on: server-side apply
keeps the server's fields (status, uid, resourceVersion) and bumps `metadata.generation`
when the spec changes; deleting an owner deletes its dependents (garbage collection).
Every call is counted by verb, so a test can assert that a reconcile wrote nothing.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from pdserve.kube import Key

WRITES = ("apply", "delete", "patch_status")


class Conflict(Exception):
    """The API server's 409: a write carried a resourceVersion the object no longer has."""


class RecordedCluster:
    def __init__(self, docs: list[dict[str, Any]] | None = None) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, Key]] = []
        self.missing_kinds: set[tuple[str, str]] = set()  # kinds the cluster has not installed
        self._uids = itertools.count(1)
        for doc in docs or []:
            self.put(doc)

    @staticmethod
    def from_files(*paths: str | Path) -> RecordedCluster:
        docs: list[dict[str, Any]] = []
        for path in paths:
            docs += [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        return RecordedCluster(docs)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Stores an object as the cluster has it (status included), without counting a call."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("generation", 1)
        meta.setdefault("resourceVersion", "1")
        self.objects[Key.of(obj)] = obj
        return obj

    def writes(self) -> int:
        return sum(self.calls[v] for v in WRITES)

    def _installed(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) not in self.missing_kinds

    # -- Objects --------------------------------------------------------------------------
    def get(self, key: Key) -> dict[str, Any] | None:
        self.calls["get"] += 1
        obj = self.objects.get(key) if self._installed(key.api_version, key.kind) else None
        return copy.deepcopy(obj)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        self.calls["list"] += 1
        if not self._installed(api_version, kind):
            return []
        out = []
        for key, obj in self.objects.items():
            if (key.api_version, key.kind) != (api_version, kind):
                continue
            if namespace is not None and key.namespace != namespace:
                continue
            have = obj["metadata"].get("labels") or {}
            if (labels or {}).items() <= have.items():
                out.append(copy.deepcopy(obj))
        return out

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        self.calls["apply"] += 1
        key = Key.of(obj)
        self.log.append(("apply", key))
        if not self._installed(key.api_version, key.kind):
            raise LookupError(f"{key}: the cluster has no {key.kind} kind installed")
        old = self.objects.get(key)
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        expected = meta.get("resourceVersion")  # a precondition, as the API server takes it
        if old is not None and expected not in (None, old["metadata"]["resourceVersion"]):
            raise Conflict(f"{key}: resourceVersion {expected} is stale")
        if old is None:
            return self.put(new)
        for field in ("uid", "resourceVersion", "generation", "creationTimestamp"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        if "status" in old:
            new["status"] = old["status"]
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"]["generation"]) + 1
        if new != old:
            meta["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
        self.objects[key] = new
        return copy.deepcopy(new)

    def delete(self, key: Key) -> None:
        self.calls["delete"] += 1
        self.log.append(("delete", key))
        obj = self.objects.pop(key, None)
        if obj is None:
            return
        uid = obj["metadata"]["uid"]
        for dep_key, dep in list(self.objects.items()):  # garbage collection
            owners = dep["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                self.objects.pop(dep_key, None)

    def patch_status(self, key: Key, status: dict[str, Any]) -> None:
        self.calls["patch_status"] += 1
        self.log.append(("patch_status", key))
        if key not in self.objects:
            raise LookupError(f"{key}: not found")
        self.objects[key]["status"] = copy.deepcopy(status)
