"""LLMInferenceService and LLMInferenceServiceConfig, serving.kserve.io/v1alpha2.

KServe v0.20's storage version and the conversion hub, and pdserve's one internal version:
the loader converts v1alpha1 documents to it, so resolve, render, explain and the runner see
only these models. It differs from v1alpha1 where KServe's does: no `model.criticality`
(the conversion keeps it in an annotation), `model.confidential`, `kvCacheOffloading` on
both pools, and a scheduler pool spec of the GA InferencePool API.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PrivateAttr

from pdserve.api.models import (
    QUANTITY,
    FreeMap,
    IngressRefs,
    LocalRef,
    ModelBase,
    NameRef,
    ObjectMeta,
    Refs,
    Route,
    SchedulerBase,
    StorageInitializer,
    Strict,
    Tracing,
)
from pdserve.api.models import Workload as WorkloadBase

API_VERSION = "serving.kserve.io/v1alpha2"
Quantity = int | Annotated[str, Field(pattern=QUANTITY)]


# --- KV cache offloading (vLLM's CPU tier, then file-system tiers) ---------------------------
class EmptyDirTier(Strict):
    size: Quantity


class PVCRefTier(Strict):
    name: str
    path: str | None = None


class PVCTier(Strict):
    spec: FreeMap | None = None
    ref: PVCRefTier | None = None


class FileSystemTier(Strict):
    empty_dir: EmptyDirTier | None = None
    pvc: PVCTier | None = None


class SecondaryTier(Strict):
    file_system: FileSystemTier | None = None


class KVCacheOffloading(Strict):
    cpu: Quantity
    eviction_policy: Literal["lru", "arc"] | None = None
    secondary: list[SecondaryTier] | None = None


class Workload(WorkloadBase):
    kv_cache_offloading: KVCacheOffloading | None = None


# --- model -----------------------------------------------------------------------------------
class Confidential(Strict):
    enabled: bool
    resource_id: str | None = None


class Model(ModelBase):
    confidential: Confidential | None = None


# --- the GA InferencePool spec (inference.networking.k8s.io/v1) ------------------------------
class Port(Strict):
    number: int = Field(ge=1, le=65535)


class EndpointPickerRef(Strict):
    name: str = Field(min_length=1)
    group: str | None = None
    kind: str | None = None
    port: Port | None = None
    failure_mode: Literal["FailOpen", "FailClose"] | None = None


class LabelSelector(Strict):
    match_labels: dict[str, str]


class PoolSpec(Strict):
    selector: LabelSelector
    target_ports: list[Port] = Field(min_length=1, max_length=1)
    endpoint_picker_ref: EndpointPickerRef
    app_protocol: Literal["http", "kubernetes.io/h2c"] | None = None


class PoolRef(Strict):
    ref: NameRef | None = None
    spec: PoolSpec | None = None


class Scheduler(SchedulerBase):
    pool: PoolRef | None = None


class Router(Strict):
    route: Route | None = None
    gateway: Refs | None = None
    ingress: IngressRefs | None = None
    scheduler: Scheduler | None = None


class Spec(Workload):
    model: Model | None = None
    base_refs: list[LocalRef] | None = None
    prefill: Workload | None = None
    router: Router | None = None
    storage_initializer: StorageInitializer | None = None
    tracing: Tracing | None = None


class _Object(Strict):
    api_version: Literal["serving.kserve.io/v1alpha2"]
    kind: str  # each kind narrows it; declared here so that a dump starts apiVersion, kind
    metadata: ObjectMeta
    spec: Spec = Field(default_factory=Spec)
    status: FreeMap | None = None


class LLMInferenceServiceConfig(_Object):
    kind: Literal["LLMInferenceServiceConfig"]


class LLMInferenceService(_Object):
    kind: Literal["LLMInferenceService"]
    # The version the manifest was written in: render emits that version's children
    # (v1alpha1: KServe v0.16's x-k8s.io InferencePool and InferenceModel; v1alpha2: the
    # GA InferencePool, as v0.20 does). Not a field: it never reaches a dump.
    _written_as: str = PrivateAttr(default=API_VERSION)

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def written_as(self) -> str:
        return self._written_as

    def as_written(self, api_version: str) -> LLMInferenceService:
        """This object, remembered as written in `api_version`."""
        self._written_as = api_version
        return self
