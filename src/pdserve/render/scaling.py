"""Autoscalers for the pools: an HPA (autoscaling/v2) or a KEDA ScaledObject per pool whose
workload sets `scaling`.

Each pool scales on the engine metric that says it is full (docs/scaling.md says why):

- decode (the service's own workload, and a non-P/D service's only pool):
  `vllm:kv_cache_usage_perc`, averaged over the pool's pods, target 0.8: decode is
  memory-bound, so a pool is full when its KV cache is, long before its compute is;
- prefill (`spec.prefill`): `vllm:num_requests_waiting`, averaged, target 2: prefill is
  compute-bound, so load shows as a queue (and as TTFT) before anything else.

Both are metrics vLLM exports and our simulated engine serves under the same names. The
targets can be set per service with the annotations `pdserve.io/scaling-target-decode` and
`pdserve.io/scaling-target-prefill` (a number, e.g. "0.7" or "4").

Which autoscaler, by the pool's `scaling`:

- `keda` (the user's own triggers, KServe main): a ScaledObject with those triggers, and
  `pollingInterval`, `cooldownPeriod`, `initialCooldownPeriod`, `idleReplicaCount`,
  `fallback`, `advanced` passed through. It wins over `wva`, as on KServe main.
- `wva.keda`: a ScaledObject with the same knobs and one `prometheus` trigger on the pool's
  metric: `sum(metric{namespace, pod=~<the pool's pods>})` against the per-pod target (KEDA's
  default AverageValue divides the sum by the target). The Prometheus address is the
  service annotation `pdserve.io/prometheus-address`, else `DEFAULT_PROMETHEUS`.
- `wva.hpa`: an HPA with a `Pods` metric of the same name, `AverageValue` the target, and
  `behavior` from `wva.hpa.behavior`. It needs a custom metrics adapter (e.g.
  prometheus-adapter) that serves the vLLM metric under its own name for pods.

Either targets the pool's Deployment, or its LeaderWorkerSet when the pool is multi-node
(the LWS scale subresource selects leader pods, which serve the metrics). `minReplicas`
defaults to 1, as KServe's. The workload is then rendered without `replicas`, so that the
autoscaler owns it (server-side apply would otherwise reset it on each reconcile).

Names and labels are KServe's: `<name>-kserve-hpa`, `<name>-kserve-prefill-hpa`,
`<name>-kserve-keda`, `<name>-kserve-prefill-keda` (knative ChildName), labelled as the
workload with component `llminferenceservice-workload`.

KServe v0.20 differs for `wva`: it renders a VariantAutoscaling (llmd.ai/v1alpha1,
`<name>-kserve-va`) for the Workload Variant Autoscaler controller, which computes
`wva_desired_replicas`, and an HPA/ScaledObject that only relays that number (external
metric, target 1). We render no VariantAutoscaling (it needs the WVA controller installed,
and `variantCost` means nothing without it): the HPA/ScaledObject here decide on the pool's
own metric, which any cluster with Prometheus can serve.
"""

from __future__ import annotations

import re
from typing import Any

from pdserve.errors import UserError
from pdserve.render import names
from pdserve.render.workload import meta

DECODE_METRIC = "vllm:kv_cache_usage_perc"
PREFILL_METRIC = "vllm:num_requests_waiting"
DECODE_TARGET = "0.8"
PREFILL_TARGET = "2"
TARGET_ANNOTATION = "pdserve.io/scaling-target-"  # + "decode" / "prefill"
PROMETHEUS_ANNOTATION = "pdserve.io/prometheus-address"
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
KEDA_API = "keda.sh/v1alpha1"
LWS_API = "leaderworkerset.x-k8s.io/v1"
KEDA_KNOBS = (
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "fallback",
    "advanced",
)
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def pools(service: dict[str, Any]) -> list[tuple[bool, dict[str, Any]]]:
    """(prefill?, workload) of each pool that sets `scaling`."""
    spec = service["spec"]
    out = [(False, spec)]
    if spec.get("prefill") is not None:
        out.append((True, spec["prefill"]))
    return [(prefill, w) for prefill, w in out if w.get("scaling")]


def metric(prefill: bool) -> str:
    return PREFILL_METRIC if prefill else DECODE_METRIC


def target(service: dict[str, Any], prefill: bool) -> str:
    """The per-pod target of the pool's metric, as a decimal string."""
    annotations = service["metadata"].get("annotations") or {}
    key = TARGET_ANNOTATION + ("prefill" if prefill else "decode")
    value = annotations.get(key)
    if value is None:
        return PREFILL_TARGET if prefill else DECODE_TARGET
    if not _NUMBER.match(value):
        raise UserError(f"annotation {key}: {value!r} is not a decimal number")
    return value


def quantity(decimal: str) -> str:
    """A decimal as a Kubernetes quantity: whole numbers as they are, fractions in milli."""
    whole, _, frac = decimal.partition(".")
    if not frac.strip("0"):
        return whole
    milli = int(whole) * 1000 + int((frac + "000")[:3])
    return f"{milli}m"


def scale_target(
    service: dict[str, Any], workload: dict[str, Any], prefill: bool
) -> dict[str, str]:
    name = service["metadata"]["name"]
    if workload.get("worker"):
        return {
            "apiVersion": LWS_API,
            "kind": "LeaderWorkerSet",
            "name": names.workload(name, prefill, True),
        }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": names.workload(name, prefill)}


def pod_pattern(service: dict[str, Any], workload: dict[str, Any], prefill: bool) -> str:
    """A Prometheus regex (anchored) for the names of the pool's serving pods: a
    Deployment's `<deployment>-<hash>-<suffix>`, a LeaderWorkerSet's leaders `<lws>-<group>`
    (workers, `<lws>-<group>-<index>`, run headless ranks). Decode's pattern never matches a
    prefill pod: `-prefill` is one more dash-separated segment."""
    target = scale_target(service, workload, prefill)["name"].replace(".", "\\.")
    if workload.get("worker"):
        return f"{target}-[0-9]+"
    return f"{target}-[a-z0-9]+-[a-z0-9]+"


def hpa(
    service: dict[str, Any], workload: dict[str, Any], prefill: bool, namespace: str
) -> dict[str, Any]:
    name = service["metadata"]["name"]
    scaling = workload["scaling"]
    spec: dict[str, Any] = {
        "scaleTargetRef": scale_target(service, workload, prefill),
        "minReplicas": scaling.get("minReplicas", 1),
        "maxReplicas": scaling["maxReplicas"],
        "metrics": [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": metric(prefill)},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": quantity(target(service, prefill)),
                    },
                },
            }
        ],
    }
    behavior = ((scaling.get("wva") or {}).get("hpa") or {}).get("behavior")
    if behavior:
        spec["behavior"] = behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(names.hpa(name, prefill), namespace, names.scaling_labels(name)),
        "spec": spec,
    }


def prometheus_trigger(
    service: dict[str, Any], workload: dict[str, Any], prefill: bool, namespace: str
) -> dict[str, Any]:
    annotations = service["metadata"].get("annotations") or {}
    pods = pod_pattern(service, workload, prefill).replace("\\", "\\\\")
    query = f'sum({metric(prefill)}{{namespace="{namespace}",pod=~"{pods}"}})'
    return {
        "type": "prometheus",
        "name": "kv-cache-usage" if not prefill else "requests-waiting",
        "metadata": {
            "serverAddress": annotations.get(PROMETHEUS_ANNOTATION, DEFAULT_PROMETHEUS),
            "query": query,
            "threshold": target(service, prefill),
        },
    }


def scaled_object(
    service: dict[str, Any], workload: dict[str, Any], prefill: bool, namespace: str
) -> dict[str, Any]:
    name = service["metadata"]["name"]
    scaling = workload["scaling"]
    direct = scaling.get("keda")
    knobs = direct if direct is not None else (scaling.get("wva") or {}).get("keda") or {}
    spec: dict[str, Any] = {
        "scaleTargetRef": scale_target(service, workload, prefill),
        "minReplicaCount": scaling.get("minReplicas", 1),
        "maxReplicaCount": scaling["maxReplicas"],
    }
    spec.update({k: knobs[k] for k in KEDA_KNOBS if knobs.get(k) is not None})
    if direct is not None:
        spec["triggers"] = direct["triggers"]
    else:
        spec["triggers"] = [prometheus_trigger(service, workload, prefill, namespace)]
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": meta(names.scaled_object(name, prefill), namespace, names.scaling_labels(name)),
        "spec": spec,
    }


def uses_keda(workload: dict[str, Any]) -> bool:
    scaling = workload.get("scaling") or {}
    return scaling.get("keda") is not None or (scaling.get("wva") or {}).get("keda") is not None


def autoscalers(service: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """One HPA or ScaledObject per pool that sets `scaling`, decode first."""
    out = []
    for prefill, workload in pools(service):
        if uses_keda(workload):
            out.append(scaled_object(service, workload, prefill, namespace))
        else:
            out.append(hpa(service, workload, prefill, namespace))
    return out
