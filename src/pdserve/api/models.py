"""LLMInferenceService and LLMInferenceServiceConfig, serving.kserve.io/v1alpha1, and the
structures v1alpha2 (`api/v1alpha2.py`) shares with it.

Fields follow KServe v0.20's CRD, plus the ones its main branch added to both versions
since (`rolloutStrategy`, `router.scheduler.tokenizer`, `scaling.keda`). Our own structures
reject unknown fields (a typo in a manifest is the commonest user error, so it must fail
like `kubectl --validate=strict`); the Kubernetes PodSpec is typed
only as far as strategic merge needs (containers, env, ports, volumes, volumeMounts by key)
and round-trips every other field unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

API_VERSION = "serving.kserve.io/v1alpha1"
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
SERVICE_KIND = "LLMInferenceService"
CONFIG_KIND = "LLMInferenceServiceConfig"
URI_SCHEMES = ("hf://", "pvc://", "s3://", "oci://", "file://", "builtin://")


# pydantic-core raises past 255 levels of serialising, counting a value's lists and mappings
# and some of the models around it (those it serialises by reference: up to 2 at most on our
# paths now); checked while validating, with room to spare for the models, so that a
# manifest that validates also dumps, and validation need not dump it to find out.
MAX_FREE_DEPTH = 200


def _depth(value: Any) -> int:
    """Levels of lists and mappings in `value`; iterative, as a hostile one is deep."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list | tuple):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in node)
    return deepest


def _shallow(value: Any) -> Any:
    if isinstance(value, dict | list | tuple) and _depth(value) > MAX_FREE_DEPTH:
        raise ValueError(f"nested too deeply: more than {MAX_FREE_DEPTH} levels")
    return value


# A value we pass through unread (a pod template's untyped field, a status): any JSON
# that serialises again.
Free = Annotated[Any, AfterValidator(_shallow)]
FreeMap = dict[str, Free]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Open(BaseModel):
    """Kubernetes structures: the fields we merge on are typed, the rest pass through."""

    model_config = ConfigDict(
        extra="allow",
        alias_generator=to_camel,
        populate_by_name=True,
        json_schema_extra={"additionalProperties": True},  # the CRD's preserve-unknown-fields
    )
    __pydantic_extra__: dict[str, Free]


# --- PodSpec (as far as strategic merge needs it) ----------------------------------------
class EnvVar(Open):
    name: str
    value: str | None = None


class ContainerPort(Open):
    container_port: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None


class VolumeMount(Open):
    name: str
    mount_path: str


class Container(Open):
    name: str
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    ports: list[ContainerPort] | None = None
    volume_mounts: list[VolumeMount] | None = None
    resources: FreeMap | None = None


class Volume(Open):
    name: str


class PodSpec(Open):
    containers: list[Container] | None = None
    init_containers: list[Container] | None = None
    volumes: list[Volume] | None = None


# --- workload --------------------------------------------------------------------------------
class Parallelism(Strict):
    tensor: int | None = Field(None, ge=1)
    pipeline: int | None = Field(None, ge=1)
    data: int | None = Field(None, ge=1)
    data_local: int | None = Field(None, ge=1)
    data_rpc_port: int | None = Field(None, ge=1, le=65535, alias="dataRPCPort")
    expert: bool | None = None


class HPAScaling(Strict):
    behavior: FreeMap | None = None


class KEDAScaling(Strict):
    polling_interval: int | None = Field(None, ge=1)
    cooldown_period: int | None = Field(None, ge=0)
    initial_cooldown_period: int | None = Field(None, ge=0)
    idle_replica_count: int | None = Field(None, ge=1)
    fallback: FreeMap | None = None
    advanced: FreeMap | None = None


class DirectKEDAScaling(KEDAScaling):
    """KEDA driven by the user's own triggers rather than WVA's (KServe main, not v0.20)."""

    triggers: list[FreeMap]


class WVA(Strict):
    variant_cost: str | None = Field(None, pattern=r"^\d+(\.\d+)?$")
    hpa: HPAScaling | None = None
    keda: KEDAScaling | None = None

    @model_validator(mode="after")
    def _one_actuator(self) -> WVA:
        if (self.hpa is None) == (self.keda is None):
            raise ValueError("wva needs exactly one actuator backend: hpa or keda")
        return self


class Scaling(Strict):
    min_replicas: int | None = Field(None, ge=1)
    max_replicas: int = Field(ge=1)
    wva: WVA | None = None
    keda: DirectKEDAScaling | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.wva is None and self.keda is None:
            raise ValueError("scaling needs an autoscaler: wva (or keda)")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas cannot exceed maxReplicas")
        idle = self.wva.keda.idle_replica_count if self.wva and self.wva.keda else None
        if idle is not None and (self.min_replicas is None or idle >= self.min_replicas):
            raise ValueError("wva.keda.idleReplicaCount needs a larger minReplicas")
        return self


class RolloutStrategy(Strict):
    """KServe main, not v0.20: the Deployment's rolling update bounds."""

    max_unavailable: int | str | None = None
    max_surge: int | str | None = None


class Workload(Strict):
    replicas: int | None = Field(None, ge=0)
    parallelism: Parallelism | None = None
    template: PodSpec | None = None
    worker: PodSpec | None = None
    scaling: Scaling | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    rollout_strategy: RolloutStrategy | None = None

    @model_validator(mode="after")
    def _replicas_or_scaling(self) -> Workload:
        if self.replicas is not None and self.scaling is not None:
            raise ValueError("replicas and scaling are mutually exclusive")
        return self


# --- model -----------------------------------------------------------------------------------
class LoRA(Strict):
    adapters: list[FreeMap] | None = None
    max_rank: int | None = Field(None, ge=1)
    max_adapters: int | None = Field(None, ge=1)
    max_cpu_adapters: int | None = Field(None, ge=1)


class ModelBase(Strict):
    uri: str | None = None
    name: str | None = None
    lora: LoRA | None = None

    @model_validator(mode="after")
    def _scheme(self) -> ModelBase:
        uri = self.uri
        if uri and "://" in uri and not uri.startswith(URI_SCHEMES):
            scheme = uri.split("://", 1)[0]
            raise ValueError(
                f"uri: unknown scheme {scheme!r} (expected one of "
                f"{', '.join(s[:-3] for s in URI_SCHEMES)}, or a local path)"
            )
        return self


class Model(ModelBase):
    criticality: Literal["Critical", "Standard", "Sheddable"] | None = None


# --- router ----------------------------------------------------------------------------------
class Ref(Strict):
    name: str
    namespace: str | None = None
    section_name: str | None = None


class LocalRef(Strict):
    name: str


class IngressRef(Strict):
    name: str
    namespace: str | None = None


class HTTPRouteRef(Strict):
    refs: list[LocalRef] | None = None
    spec: FreeMap | None = None


class Route(Strict):
    http: HTTPRouteRef | None = None
    group: str | None = None
    weight: int | None = Field(None, ge=0)


class Refs(Strict):
    refs: list[Ref] | None = None


class IngressRefs(Strict):
    refs: list[IngressRef] | None = None


class ConfigMapKeyRef(Strict):
    key: str
    name: str | None = None
    optional: bool | None = None


class SchedulerConfig(Strict):
    inline: str | FreeMap | None = None
    ref: ConfigMapKeyRef | None = None


class Tokenizer(Strict):
    """KServe main, not v0.20: the standalone tokenizer, a vLLM render server the renderer
    makes `<name>-tokenizer` (Deployment and Service); its template merges over the
    tokenizer preset's."""

    template: PodSpec | None = None


class SchedulerBase(Strict):
    template: PodSpec | None = None
    config: SchedulerConfig | None = None
    replicas: int | None = Field(None, ge=0)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    tokenizer: Tokenizer | None = None


class NameRef(Strict):
    name: str | None = None


# --- the InferencePool the scheduler may be given: inference.networking.x-k8s.io/v1alpha2
class ExtensionRef(Strict):
    name: str = Field(min_length=1)
    group: str | None = None
    kind: str | None = None
    port_number: int | None = Field(None, ge=1, le=65535)
    failure_mode: Literal["FailOpen", "FailClose"]


class PoolSpec(Strict):
    selector: dict[str, str]
    target_port_number: int
    extension_ref: ExtensionRef | None = None


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


class Tracing(Strict):
    exporter_endpoint: str | None = None
    sampler: str | None = None
    sampler_arg: str | None = None
    exporter: str | None = None


class StorageInitializer(Strict):
    enabled: bool | None = None


class Spec(Workload):
    model: Model | None = None
    base_refs: list[LocalRef] | None = None
    prefill: Workload | None = None
    router: Router | None = None
    storage_initializer: StorageInitializer | None = None
    tracing: Tracing | None = None


class ObjectMeta(Open):
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class _Object(Strict):
    api_version: Literal["serving.kserve.io/v1alpha1"]
    kind: str  # each kind narrows it; declared here so that a dump starts apiVersion, kind
    metadata: ObjectMeta
    spec: Spec = Field(default_factory=Spec)
    status: FreeMap | None = None


class LLMInferenceServiceConfig(_Object):
    kind: Literal["LLMInferenceServiceConfig"]


class LLMInferenceService(_Object):
    kind: Literal["LLMInferenceService"]

    @property
    def name(self) -> str:
        return self.metadata.name or ""


def dump(obj: BaseModel) -> dict[str, Any]:
    """The object as the JSON/YAML a user would write (camelCase, no nulls)."""
    return obj.model_dump(by_alias=True, exclude_none=True, mode="json")
