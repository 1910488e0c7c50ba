"""One reconcile of one service: apply what differs, prune what is no longer rendered, and
write status only when it changed.

Writes are the expensive and noisy part of an operator (each one wakes every watcher of
the object), so a pass over an unchanged service reads and writes nothing: a child is
applied only when a field we set differs on the live object, and the status only when a
condition, address or workload changed. Deleting a service needs nothing from us: its
children carry an ownerReference to it and the garbage collector removes them.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pdserve import wire
from pdserve.api.loader import ManifestError
from pdserve.kube import Key, Objects
from pdserve.operator import children as ch
from pdserve.operator import status as st
from pdserve.tls import self_signed_pem

# The status fields this operator owns: one it set before and no longer does is sent as null
# (a merge patch removes it), and only these are compared to decide whether to write.
STATUS_FIELDS = (
    "observedGeneration",
    "conditions",
    "workloads",
    "appliedConfigs",
    "url",
    "address",
    "addresses",
)


@dataclass
class Outcome:
    """What a pass did, for logs and tests."""

    applied: list[Key] = field(default_factory=list)
    pruned: list[Key] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    status_written: bool = False
    problems: list[str] = field(default_factory=list)


def subset(want: Any, have: Any) -> bool:
    """Whether every field of `want` is in `have` with the same value: the live object may
    carry more (defaults, status, fields other managers set) and still be as we left it.
    Scalars compare as text, since the API server may serve 8000 for "8000"; an empty
    value we set may be absent, since the server omits empty fields it stores."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            subset(v, have[k]) if k in have else v in (None, {}, [], "") for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(subset(w, h) for w, h in zip(want, have, strict=True))
        )
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    return want == have or str(want) == str(have)


def live_children(objects: Objects, service: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    """Every object of a child kind labelled as this service's: what pruning may remove."""
    meta = service["metadata"]
    labels = ch.managed_labels(meta["name"])
    out: dict[Key, dict[str, Any]] = {}
    for api_version, kind in ch.CHILD_KINDS:
        for obj in objects.list(api_version, kind, meta.get("namespace"), labels):
            if _owned_by(obj, meta.get("uid")):
                out[Key.of(obj)] = obj
    return out


def _owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    """A label can be copied; the ownerReference's uid says it is this service's (not a
    deleted namesake's, whose children the collector is still removing)."""
    owners = obj["metadata"].get("ownerReferences") or []
    return any(o.get("uid") == uid for o in owners)


def apply_children(
    objects: Objects, want: list[dict[str, Any]], live: dict[Key, dict[str, Any]]
) -> tuple[list[Key], st.Observed]:
    observed = st.Observed()
    applied = []
    for child in want:
        key = Key.of(child)
        have = live.get(key)
        if have is not None and subset(child, have):
            observed.children[key] = have
            continue
        try:
            observed.children[key] = objects.apply(child, ch.FIELD_MANAGER)
        except LookupError as err:  # the kind is not installed (no LeaderWorkerSet CRD, ...)
            observed.errors[key] = str(err)
            continue
        applied.append(key)
    return applied, observed


def prune(
    objects: Objects, live: dict[Key, dict[str, Any]], want: list[dict[str, Any]]
) -> list[Key]:
    """Children of ours no longer rendered (prefill or router removed from the spec)."""
    keep = {Key.of(c) for c in want}
    gone = [key for key in live if key not in keep]
    for key in gone:
        objects.delete(key)
    return gone


def _not_available(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return not any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def observe(
    objects: Objects, service: dict[str, Any], spec: dict[str, Any], observed: st.Observed
) -> None:
    """What status needs beyond the children: the Gateways, the autoscalers rendered beside
    the workloads, and the pods (read only when a workload is not available)."""
    ns = service["metadata"].get("namespace")
    for key, obj in list(observed.children.items()):
        if key.kind == "HTTPRoute":
            for gw_ns, gw_name in st.parent_refs(obj):
                gw = objects.get(Key("gateway.networking.k8s.io/v1", "Gateway", gw_ns, gw_name))
                observed.gateways[(gw_ns, gw_name)] = gw
        if key.kind in ("Deployment", "LeaderWorkerSet"):
            _observe_autoscaler(objects, key, spec, observed)
    workloads = [
        o for k, o in observed.children.items() if k.kind in ("Deployment", "LeaderWorkerSet")
    ]
    if any(_not_available(o) for o in workloads):
        labels = {wire.NAME_LABEL: service["metadata"]["name"]}
        observed.pods = objects.list("v1", "Pod", ns, labels)


def _observe_autoscaler(
    objects: Objects, key: Key, spec: dict[str, Any], observed: st.Observed
) -> None:
    prefill = key.name.endswith("-prefill")
    scaling = ((spec.get("prefill") or {}) if prefill else spec).get("scaling")
    if not scaling:
        return
    for api_version, kind in (st.HPA, st.SCALED_OBJECT):
        auto = Key(api_version, kind, key.namespace, key.name)
        if auto in observed.children:
            return
        obj = objects.get(auto)
        if obj is not None:
            observed.children[auto] = obj
            return


def with_transition_times(
    new: list[dict[str, Any]], old: list[dict[str, Any]], now: datetime.datetime
) -> list[dict[str, Any]]:
    """A condition's lastTransitionTime moves only when its status flips."""
    before = {c.get("type"): c for c in old}
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for c in new:
        prev = before.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"]
        when = prev.get("lastTransitionTime") if same and prev else None
        out.append({**c, "lastTransitionTime": when or stamp})
    return out


def _owned(status: dict[str, Any]) -> dict[str, Any]:
    return {k: status[k] for k in STATUS_FIELDS if status.get(k) is not None}


def write_status(
    objects: Objects, service: dict[str, Any], new: dict[str, Any], now: datetime.datetime
) -> tuple[dict[str, Any], bool]:
    old = service.get("status") or {}
    new = {
        **new,
        "conditions": with_transition_times(new["conditions"], old.get("conditions") or [], now),
    }
    if _owned(old) == new:
        return new, False
    patch: dict[str, Any] = {k: None for k in _owned(old) if k not in new}
    patch.update(new)
    objects.patch_status(Key.of(service), patch)
    return new, True


def reconcile(
    objects: Objects,
    service: dict[str, Any],
    now: datetime.datetime,
    system_namespace: str = "pdserve-system",
    make_certs: Callable[[], ch.Certs] = self_signed_pem,
) -> Outcome:
    """`service` as the API serves it (status included, so an unchanged status is not
    rewritten). A service whose configs do not merge is reported, not raised: nothing of it
    is applied or pruned until it is fixed. A service being deleted is left to the garbage
    collector: applying now would recreate children it is removing."""
    if service["metadata"].get("deletionTimestamp"):
        return Outcome()
    try:
        want = ch.desired(objects, service, system_namespace, make_certs)
    except ManifestError as err:
        new, written = write_status(objects, service, st.merge_failed(service, err.problems), now)
        return Outcome(status=new, status_written=written, problems=err.problems)
    live = live_children(objects, service)
    applied, observed = apply_children(objects, want.children, live)
    pruned = prune(objects, live, want.children)
    spec = want.service.model_dump(by_alias=True, exclude_none=True, mode="json")["spec"]
    observe(objects, service, spec, observed)
    new = st.compute(service, spec, want.children, observed, want.applied_configs)
    new, written = write_status(objects, service, new, now)
    return Outcome(applied, pruned, new, written)
