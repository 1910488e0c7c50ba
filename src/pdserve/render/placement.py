"""Placement of multi-node groups: the keys a manifest may set to have its LeaderWorkerSets
placed by topology or by a gang scheduler. Each is upstream's own key, written as an
annotation on the LLMInferenceService (for both pools) or in a pool's `annotations` (for that
pool, winning over the service's); nothing is rendered unless the manifest asks.

- `leaderworkerset.sigs.k8s.io/exclusive-topology: <topologyKey>` (LWS): copied to the
  LeaderWorkerSet's annotations, where the LWS controller makes each group's pods land in
  one topology domain (e.g. `cloud.provider.com/topology-block`, or
  `kubernetes.io/hostname`) that no other group shares.
- `kai.scheduler/queue: <queue>` (KAI Scheduler): rendered as a label of that name on the
  LeaderWorkerSet and its leader and worker pods, which is where KAI's pod grouper reads the
  queue; the grouper then makes one PodGroup per LWS group (all of a group's pods or none).
- `scheduling.volcano.sh/queue-name: <queue>` (Volcano): copied to the LeaderWorkerSet's
  annotations, where the LWS controller's Volcano provider reads the queue of the PodGroup
  it creates per group. With LWS's `gangSchedulingManagement.schedulerProvider: volcano`, LWS
  also annotates each pod with `scheduling.k8s.io/group-name`, so we render no PodGroup: a
  static one could not follow the groups LWS creates as replicas change.

`schedulerName` (`kai-scheduler`, `volcano`, ...) is the pod spec's own field: set it in the
pool's `template` and `worker`, which pass it through unchanged. Single-node pools
(Deployments) get none of these keys.
"""

from __future__ import annotations

from typing import Any

EXCLUSIVE_TOPOLOGY = "leaderworkerset.sigs.k8s.io/exclusive-topology"
KAI_QUEUE = "kai.scheduler/queue"
VOLCANO_QUEUE = "scheduling.volcano.sh/queue-name"
LWS_ANNOTATIONS = (EXCLUSIVE_TOPOLOGY, VOLCANO_QUEUE)
KEYS = (*LWS_ANNOTATIONS, KAI_QUEUE)


def requested(service: dict[str, Any], workload: dict[str, Any]) -> dict[str, str]:
    """The placement keys the manifest sets for this pool: the service's, then the pool's."""
    merged = {
        **(service["metadata"].get("annotations") or {}),
        **(workload.get("annotations") or {}),
    }
    return {k: merged[k] for k in KEYS if merged.get(k)}


def apply(lws: dict[str, Any], service: dict[str, Any], workload: dict[str, Any]) -> None:
    """Puts the requested keys on a rendered LeaderWorkerSet, in place."""
    keys = requested(service, workload)
    annotations = {k: v for k, v in keys.items() if k in LWS_ANNOTATIONS}
    if annotations:
        lws["metadata"].setdefault("annotations", {}).update(annotations)
    queue = keys.get(KAI_QUEUE)
    if queue:
        group = lws["spec"]["leaderWorkerTemplate"]
        for obj in (lws, group["leaderTemplate"], group["workerTemplate"]):
            obj["metadata"]["labels"] = {**obj["metadata"]["labels"], KAI_QUEUE: queue}
