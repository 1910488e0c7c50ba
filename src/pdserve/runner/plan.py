"""What to run on one machine for a merged LLMInferenceService: a pure function.

The merged spec (presets, baseRefs and the service combined by pdserve.api) says
how many prefill and decode replicas there are and which vLLM args each pool's
`main` container carries; the rest (ports, processes) is the runner's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pdserve.wire import ROLE_BOTH, ROLE_DECODE, ROLE_PREFILL

MAIN_CONTAINER = "main"


@dataclass(frozen=True)
class Pool:
    role: str  # llm-d.ai/role of its endpoints: prefill, decode, or both (aggregated)
    replicas: int
    args: tuple[str, ...]  # the main container's vLLM args
    tensor: int = 1  # spec parallelism.tensor: GPUs per replica (render adds the vLLM flag)


@dataclass(frozen=True)
class Plan:
    name: str
    namespace: str
    model_uri: str
    served_name: str
    decode: Pool
    prefill: Pool | None
    scheduler_config: str
    failure_mode: str = "FailOpen"  # the InferencePool's: what the gateway does without the EPP

    @property
    def pd(self) -> bool:
        return self.prefill is not None

    @property
    def route_prefix(self) -> str:
        """The HTTPRoute's path prefix, rewritten to / by the gateway."""
        return f"/{self.namespace}/{self.name}"

    def pool(self, role: str) -> Pool:
        if role == ROLE_PREFILL:
            if self.prefill is None:
                raise KeyError("this service has no prefill pool")
            return self.prefill
        return self.decode


def make_plan(merged: dict[str, Any], namespace: str, scheduler_config: str) -> Plan:
    meta = merged.get("metadata") or {}
    spec = merged.get("spec") or {}
    name = meta.get("name") or "llmisvc"
    model = spec.get("model") or {}
    prefill_spec = spec.get("prefill")
    decode_role = ROLE_DECODE if prefill_spec is not None else ROLE_BOTH
    prefill = None
    if prefill_spec is not None:
        prefill = Pool(
            ROLE_PREFILL, _replicas(prefill_spec), _main_args(prefill_spec), _tensor(prefill_spec)
        )
    return Plan(
        name=name,
        namespace=meta.get("namespace") or namespace,
        model_uri=model.get("uri", ""),
        served_name=model.get("name") or name,
        decode=Pool(decode_role, _replicas(spec), _main_args(spec), _tensor(spec)),
        prefill=prefill,
        scheduler_config=scheduler_config,
        failure_mode=_failure_mode(spec),
    )


def _failure_mode(spec: dict[str, Any]) -> str:
    """A pool spec of the manifest's own says (v1alpha2's extensionRef or GA's
    endpointPickerRef); else FailOpen, what KServe renders."""
    pool = (((spec.get("router") or {}).get("scheduler") or {}).get("pool") or {}).get("spec")
    pool = pool if isinstance(pool, dict) else {}
    for key in ("endpointPickerRef", "extensionRef"):
        ref = pool.get(key)
        if isinstance(ref, dict) and ref.get("failureMode") in ("FailOpen", "FailClose"):
            return str(ref["failureMode"])
    return "FailOpen"


def _replicas(workload: dict[str, Any]) -> int:
    value = workload.get("replicas")
    if value is None:
        value = (workload.get("scaling") or {}).get("minReplicas", 1)
    return int(value)


def _tensor(workload: dict[str, Any]) -> int:
    return int((workload.get("parallelism") or {}).get("tensor") or 1)


def _main_args(workload: dict[str, Any]) -> tuple[str, ...]:
    containers = (workload.get("template") or {}).get("containers") or []
    for container in containers:
        if container.get("name") == MAIN_CONTAINER:
            return tuple(str(a) for a in container.get("args") or ())
    return ()
