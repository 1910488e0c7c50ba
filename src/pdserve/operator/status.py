"""A service's status as KServe v0.20 reports it, from what the cluster shows of its children.

Pure: reconcile gathers the objects, this judges them. Every False condition carries a
CamelCase reason and a message that names the object to look at (the Deployment and its
pod the scheduler cannot place, the Gateway that does not exist, the parent that refused
the HTTPRoute), because `kubectl get llmisvc -o yaml` is where a person starts debugging.
Only conditions that apply are present: no prefill pool, no PrefillWorkloadReady.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdserve.kube import Key
from pdserve.render import names

Condition = dict[str, str]
Problem = tuple[str, str] | None  # (reason, message), None when ready

WORKLOAD_CONDITIONS = (
    "MainWorkloadReady",
    "WorkerWorkloadReady",
    "PrefillWorkloadReady",
    "PrefillWorkerWorkloadReady",
    "ScalingReady",
    "PrefillScalingReady",
)
ROUTER_CONDITIONS = (
    "GatewaysReady",
    "HTTPRoutesReady",
    "InferencePoolReady",
    "SchedulerWorkloadReady",
)
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
SCALED_OBJECT = ("keda.sh/v1alpha1", "ScaledObject")


@dataclass
class Observed:
    """The cluster as reconcile saw it: live children by key (autoscalers included), the
    Gateways the HTTPRoute names (None when missing), the service's pods, and the children
    whose apply failed with why."""

    children: dict[Key, dict[str, Any]] = field(default_factory=dict)
    gateways: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[Key, str] = field(default_factory=dict)


def condition(type_: str, problem: Problem) -> Condition:
    if problem is None:
        return {"type": type_, "status": "True"}
    return {"type": type_, "status": "False", "reason": problem[0], "message": problem[1]}


def _find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


# --- workloads ------------------------------------------------------------------------------
def _selected(pod: dict[str, Any], labels: dict[str, str]) -> bool:
    return labels.items() <= (pod["metadata"].get("labels") or {}).items()


def _pod_problem(pods: list[dict[str, Any]]) -> Problem:
    """The first pod the scheduler cannot place, or whose container cannot start."""
    for pod in pods:
        meta = pod["metadata"]
        who = f"pod {meta.get('namespace')}/{meta['name']}"
        scheduled = _find(_status(pod).get("conditions"), "PodScheduled")
        if scheduled and scheduled.get("status") == "False":
            reason = scheduled.get("reason") or "Unschedulable"
            return reason, f"{who} cannot be scheduled: {scheduled.get('message', '')}".strip()
        for cs in _status(pod).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull"):
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return waiting[
                    "reason"
                ], f"{who} container {cs.get('name')}: {waiting['reason']}" + (detail)
    return None


def _rolling(obj: dict[str, Any], key: Key) -> Problem:
    seen = _status(obj).get("observedGeneration")
    if seen is not None and int(seen) < int(obj["metadata"].get("generation", 0)):
        return "RolloutInProgress", f"{key}: the controller has not yet seen its latest spec"
    return None


def deployment_problem(dep: dict[str, Any], pods: list[dict[str, Any]]) -> Problem:
    key = Key.of(dep)
    want = int((dep.get("spec") or {}).get("replicas", 1))
    st = _status(dep)
    available = int(st.get("availableReplicas") or 0)
    cond = _find(st.get("conditions"), "Available")
    if want == 0 or (available > 0 and cond is not None and cond.get("status") == "True"):
        return _rolling(dep, key)
    head = f"{key} has {available}/{want} replicas available"
    selector = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    pod = _pod_problem([p for p in pods if _selected(p, selector)])
    if pod is not None:
        return pod[0], f"{head}: {pod[1]}"
    reason = (cond or {}).get("reason") or "MinimumReplicasUnavailable"
    detail = f": {cond['message']}" if cond and cond.get("message") else ""
    return reason, head + detail


def lws_problem(lws: dict[str, Any], pods: list[dict[str, Any]], workers: bool) -> Problem:
    key = Key.of(lws)
    want = int((lws.get("spec") or {}).get("replicas", 1))
    st = _status(lws)
    cond = _find(st.get("conditions"), "Available")
    if want == 0 or (cond is not None and cond.get("status") == "True"):
        return _rolling(lws, key)
    ready = int(st.get("readyReplicas") or 0)
    part = "groups (leader and workers)" if workers else "leaders"
    head = f"{key} has {ready}/{want} {part} ready"
    name = lws["metadata"]["name"]
    pod = _pod_problem([p for p in pods if _selected(p, {LWS_NAME_LABEL: name})])
    if pod is not None:
        return pod[0], f"{head}: {pod[1]}"
    reason = (cond or {}).get("reason") or "LeaderWorkerSetNotAvailable"
    return reason, head + (f": {cond['message']}" if cond and cond.get("message") else "")


def _absent(key: Key, observed: Observed) -> Problem:
    why = observed.errors.get(key)
    return "NotFound", f"{key} does not exist" + (f": {why}" if why else "")


def scaling_problem(key: Key, observed: Observed) -> Problem:
    """Whichever autoscaler the workload has: an HPA's AbleToScale and ScalingActive, or a
    KEDA ScaledObject's Ready."""
    hpa = observed.children.get(Key(*HPA, key.namespace, key.name))
    if hpa is not None:
        for type_ in ("AbleToScale", "ScalingActive"):
            c = _find(_status(hpa).get("conditions"), type_)
            if c is None or c.get("status") != "True":
                reason = (c or {}).get("reason") or f"{type_}Unknown"
                msg = (c or {}).get("message") or f"no {type_} condition yet"
                return reason, f"{Key.of(hpa)}: {msg}"
        return None
    scaled = observed.children.get(Key(*SCALED_OBJECT, key.namespace, key.name))
    if scaled is not None:
        c = _find(_status(scaled).get("conditions"), "Ready")
        if c is None or c.get("status") != "True":
            msg = (c or {}).get("message") or "not Ready yet"
            return (c or {}).get("reason") or "ScaledObjectNotReady", f"{Key.of(scaled)}: {msg}"
        return None
    return (
        "AutoscalerNotFound",
        f"neither {HPA[1]} nor {SCALED_OBJECT[1]} {key.namespace}/{key.name} exists",
    )


def _pool_conditions(
    spec: dict[str, Any], key: Key | None, prefill: bool, observed: Observed
) -> list[Condition]:
    if key is None:
        return []
    main, worker = ("Prefill", "PrefillWorker") if prefill else ("Main", "Worker")
    live = observed.children.get(key)
    out: list[Condition] = []
    if live is None:
        out.append(condition(f"{main}WorkloadReady", _absent(key, observed)))
    elif key.kind == "Deployment":
        out.append(condition(f"{main}WorkloadReady", deployment_problem(live, observed.pods)))
    else:
        out.append(condition(f"{main}WorkloadReady", lws_problem(live, observed.pods, False)))
        out.append(condition(f"{worker}WorkloadReady", lws_problem(live, observed.pods, True)))
    if spec.get("scaling"):
        scaling = "PrefillScalingReady" if prefill else "ScalingReady"
        out.append(condition(scaling, scaling_problem(key, observed)))
    return out


# --- router ---------------------------------------------------------------------------------
def parent_refs(route: dict[str, Any]) -> list[tuple[str, str]]:
    ns = route["metadata"].get("namespace")
    return [
        (r.get("namespace") or ns, r["name"])
        for r in (route.get("spec") or {}).get("parentRefs") or []
        if r.get("kind", "Gateway") == "Gateway"
    ]


def gateway_problem(route: dict[str, Any], observed: Observed) -> Problem:
    for ns, name in parent_refs(route):
        gw = observed.gateways.get((ns, name))
        if gw is None:
            return (
                "GatewayNotFound",
                f"Gateway {ns}/{name} does not exist (a parent of {Key.of(route)}); create it "
                "or name another in spec.router.gateway.refs",
            )
        programmed = _find(_status(gw).get("conditions"), "Programmed")
        if programmed is None or programmed.get("status") != "True":
            msg = (programmed or {}).get("message") or "no Programmed condition yet"
            return (programmed or {}).get("reason") or "GatewayNotProgrammed", (
                f"Gateway {ns}/{name} is not programmed: {msg}"
            )
    return None


def _parent_status(route: dict[str, Any], ns: str, name: str) -> dict[str, Any] | None:
    for parent in _status(route).get("parents") or []:
        ref = parent.get("parentRef") or {}
        if (
            ref.get("name") == name
            and (ref.get("namespace") or route["metadata"]["namespace"]) == ns
        ):
            return parent
    return None


def route_problem(route: dict[str, Any]) -> Problem:
    key = Key.of(route)
    for ns, name in parent_refs(route):
        parent = _parent_status(route, ns, name)
        if parent is None:
            return "HTTPRouteNotAccepted", f"{key}: Gateway {ns}/{name} has not accepted it yet"
        for type_ in ("Accepted", "ResolvedRefs"):
            c = _find(parent.get("conditions"), type_)
            if c is not None and c.get("status") == "False":
                return c.get("reason") or f"Not{type_}", (
                    f"{key}: Gateway {ns}/{name} reports {type_} False: {c.get('message', '')}"
                ).strip()
    return None


def pool_problem(pool: dict[str, Any]) -> Problem:
    """Accepted by at least one parent (GA `parents`; v1alpha2 of x-k8s.io says `parent`)."""
    key = Key.of(pool)
    st = _status(pool)
    parents = st.get("parents") or st.get("parent") or []
    for parent in parents:
        c = _find(parent.get("conditions"), "Accepted")
        if c is not None and c.get("status") == "False":
            ref = parent.get("parentRef") or {}
            return c.get("reason") or "NotAccepted", (
                f"{key}: parent {ref.get('namespace', '')}/{ref.get('name', '')} did not accept "
                f"it: {c.get('message', '')}"
            ).strip()
    if not any(
        (_find(p.get("conditions"), "Accepted") or {}).get("status") == "True" for p in parents
    ):
        return "InferencePoolNotAccepted", f"{key} has not been accepted by any Gateway yet"
    return None


def _router_conditions(keys: dict[str, Key], observed: Observed) -> list[Condition]:
    out: list[Condition] = []
    route_key = keys.get("route")
    if route_key is not None:
        route = observed.children.get(route_key)
        if route is None:
            out.append(condition("HTTPRoutesReady", _absent(route_key, observed)))
        else:
            out.append(condition("GatewaysReady", gateway_problem(route, observed)))
            out.append(condition("HTTPRoutesReady", route_problem(route)))
    pool_key = keys.get("pool")
    if pool_key is not None:
        pool = observed.children.get(pool_key)
        problem = _absent(pool_key, observed) if pool is None else pool_problem(pool)
        out.append(condition("InferencePoolReady", problem))
    sched_key = keys.get("scheduler")
    if sched_key is not None:
        dep = observed.children.get(sched_key)
        problem = (
            _absent(sched_key, observed) if dep is None else deployment_problem(dep, observed.pods)
        )
        out.append(condition("SchedulerWorkloadReady", problem))
    return out


# --- addresses ------------------------------------------------------------------------------
def _path(route: dict[str, Any]) -> str:
    for rule in (route.get("spec") or {}).get("rules") or []:
        for match in rule.get("matches") or []:
            path = match.get("path") or {}
            if path.get("type", "PathPrefix") == "PathPrefix" and path.get("value"):
                return str(path["value"]).rstrip("/")
    return ""


def _scheme(gw: dict[str, Any]) -> str:
    listeners = (gw.get("spec") or {}).get("listeners") or []
    return "https" if listeners and listeners[0].get("protocol") == "HTTPS" else "http"


def addresses(route: dict[str, Any] | None, observed: Observed) -> list[dict[str, Any]]:
    if route is None:
        return []
    out = []
    for ns, name in parent_refs(route):
        gw = observed.gateways.get((ns, name))
        for addr in _status(gw or {}).get("addresses") or []:
            url = f"{_scheme(gw or {})}://{addr['value']}{_path(route)}"
            origin = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name}
            out.append({"url": url, "origin": {**origin, "namespace": ns}})
    return out


# --- the whole status -----------------------------------------------------------------------
def child_keys(children: list[dict[str, Any]], name: str) -> dict[str, Key]:
    """Which rendered child plays which part, by the names render gives them."""
    wanted = {
        names.workload(name): "main",
        names.workload(name, multinode=True): "main",
        names.workload(name, prefill=True): "prefill",
        names.workload(name, prefill=True, multinode=True): "prefill",
        names.scheduler(name): "scheduler",
        names.http_route(name): "route",
        names.inference_pool(name): "pool",
        names.workload_service(name): "service",
    }
    kinds = {
        "main": ("Deployment", "LeaderWorkerSet"),
        "prefill": ("Deployment", "LeaderWorkerSet"),
        "scheduler": ("Deployment",),
        "route": ("HTTPRoute",),
        "pool": ("InferencePool",),
        "service": ("Service",),
    }
    out = {}
    for child in children:
        key = Key.of(child)
        part = wanted.get(key.name)
        if part is not None and key.kind in kinds[part]:
            out[part] = key
    return out


def _rollup(type_: str, conditions: list[Condition], under: tuple[str, ...]) -> Condition:
    """A parent condition: False with the first False child's reason and message."""
    for c in conditions:
        if c["type"] in under and c["status"] != "True":
            return {**c, "type": type_}
    return {"type": type_, "status": "True"}


def _ref(key: Key | None, live: dict[str, Any] | None, replicas: bool = True) -> dict[str, Any]:
    if key is None:
        return {}
    group = key.api_version.rpartition("/")[0]
    out: dict[str, Any] = {"kind": key.kind, "name": key.name}
    if group:
        out["apiGroup"] = group
    if replicas:
        out["readyReplicas"] = int(_status(live or {}).get("readyReplicas") or 0)
    return out


def _workloads(keys: dict[str, Key], observed: Observed) -> dict[str, Any]:
    out = {}
    for part, field_ in (("main", "primary"), ("prefill", "prefill"), ("scheduler", "scheduler")):
        if part in keys:
            out[field_] = _ref(keys[part], observed.children.get(keys[part]))
    if "service" in keys:
        out["service"] = _ref(keys["service"], None, replicas=False)
    return out


def compute(
    service: dict[str, Any],
    spec: dict[str, Any],
    children: list[dict[str, Any]],
    observed: Observed,
    applied_configs: list[dict[str, str]],
) -> dict[str, Any]:
    """The status of a service whose merged spec is `spec` and rendered children `children`
    (conditions without lastTransitionTime: reconcile keeps those across passes)."""
    keys = child_keys(children, service["metadata"]["name"])
    conditions = [condition("PresetsCombined", None)]
    conditions += _pool_conditions(spec, keys.get("main"), False, observed)
    conditions += _pool_conditions(spec.get("prefill") or {}, keys.get("prefill"), True, observed)
    conditions += _router_conditions(keys, observed)
    workloads = _rollup("WorkloadsReady", conditions, WORKLOAD_CONDITIONS)
    router = _rollup("RouterReady", conditions, ROUTER_CONDITIONS)
    conditions += [workloads, router]
    conditions.append(
        _rollup("Ready", conditions, ("PresetsCombined", "WorkloadsReady", "RouterReady"))
    )
    route = observed.children.get(keys["route"]) if "route" in keys else None
    out: dict[str, Any] = {
        "observedGeneration": service["metadata"].get("generation", 0),
        "conditions": sorted(conditions, key=lambda c: c["type"]),
        "workloads": _workloads(keys, observed),
        "appliedConfigs": applied_configs,
    }
    addrs = addresses(route, observed)
    if addrs:
        out["url"] = addrs[0]["url"]
        out["address"] = {"url": addrs[0]["url"]}
        out["addresses"] = addrs
    return out


def merge_failed(service: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A service whose configs do not merge: nothing is applied, the status says why."""
    message = "; ".join(problems)
    failed = condition("PresetsCombined", ("CombineBaseError", message))
    return {
        "observedGeneration": service["metadata"].get("generation", 0),
        "conditions": [failed, {**failed, "type": "Ready"}],
    }
