"""The data layer, request parsers and discovery: plugins whose work is done at the edges
(datastore.py scrapes /metrics, request.py parses bodies, kv_events.py listens), declared
here so configs name them, reference them, and are checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, model_validator

from pdserve import promtext
from pdserve.epp.framework import ConfigError, Parameters, Passive, go_duration, register

if TYPE_CHECKING:
    from pdserve.epp.types import Endpoint, Metrics


class DataSource(Passive):
    def attach(self, extractor: Extractor) -> None:
        """dataLayer.sources[].extractors lists `extractor` under this source (the loader
        calls this): a source whose work needs an extractor learns it has one."""
        extractor.fed = True


class Extractor(Passive):
    fed = False  # some dataLayer source lists it


class Discovery(Passive):
    pass


class Parser(Passive):
    pass


class MetricsSourceParams(Parameters):
    scheme: str = "http"
    path: str = "/metrics"
    port: int | None = Field(None, ge=1, le=65535)
    interval: str | None = None
    insecureSkipVerify: bool = True
    caCertPath: str = ""
    clientCertPath: str = ""
    clientKeyPath: str = ""


@register("metrics-data-source")
class MetricsDataSource(DataSource):
    """The datastore's scraper is this source: every endpoint's /metrics over HTTP on its
    own port, every --refresh-metrics-interval."""

    Params = MetricsSourceParams
    params: MetricsSourceParams

    def inert(self) -> dict[str, str]:
        why = "the scraper reads http://<endpoint>/metrics every --refresh-metrics-interval"
        return {k: why for k in sorted(self.params.model_fields_set)}


_SPEC = re.compile(r"^\s*(\S+?)\s*(?:\{([^}]*)\})?\s*$")
_PAIR = re.compile(r'^\s*(\S+?)\s*=\s*"([^"]*)"\s*$')
_BARE = re.compile(r'(\w+)\s*=\s*([^",}\s]+)')  # label=value, quoted before matching
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class MetricSpec:
    """`name{label=value,...}` as upstream's extractor reads a spec (spec.go)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MetricSpec:
        m = _SPEC.match(_BARE.sub(r'\1="\2"', text))
        if m is None or not _METRIC_NAME.fullmatch(m[1]):
            raise ValueError(f"not a valid metric specification: {text!r}")
        labels = {}
        block = (m[2] or "").strip()
        for pair in block.split(",") if block else ():
            lm = _PAIR.match(pair)
            if lm is None or not _LABEL_NAME.fullmatch(lm[1]):
                raise ValueError(f"invalid label pair {pair!r} in specification: {text!r}")
            labels[lm[1]] = lm[2]
        return cls(m[1], tuple(sorted(labels.items())))

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True)
class CustomMetric:
    attribute: str
    spec: MetricSpec


class CustomMetricParams(BaseModel):
    model_config = Parameters.model_config
    attributeKey: str
    metricSpec: str


SPEC_FIELDS = (
    "queuedRequestsSpec",
    "runningRequestsSpec",
    "kvUsageSpec",
    "loraSpec",
    "cacheInfoSpec",
    "cacheBlockSizeSpec",
    "cacheNumBlocksSpec",
)


class EngineConfig(BaseModel):
    model_config = Parameters.model_config
    name: str = Field(min_length=1)
    queuedRequestsSpec: str = ""
    runningRequestsSpec: str = ""
    kvUsageSpec: str = ""
    loraSpec: str = ""
    cacheInfoSpec: str = ""
    cacheBlockSizeLabelName: str = ""
    cacheNumBlocksLabelName: str = ""
    cacheBlockSizeSpec: str = ""
    cacheNumBlocksSpec: str = ""
    customMetrics: list[CustomMetricParams] = Field(default_factory=list)

    @model_validator(mode="after")
    def _specs(self) -> EngineConfig:
        """Every spec must parse, as upstream's factory demands; "default" is reserved."""
        if self.name == "default":
            raise ValueError('engine config name cannot be "default" (reserved)')
        for key in SPEC_FIELDS:
            if getattr(self, key):
                MetricSpec.parse(getattr(self, key))
        for custom in self.customMetrics:
            MetricSpec.parse(custom.metricSpec)
        return self


# Upstream's built-in engines: a default engine may name one without configuring it.
BUILTIN_ENGINES = ("vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm", "triton")
ENGINE_LABEL = "llm-d.ai/engine-type"
LEGACY_ENGINE_LABEL = "inference.networking.k8s.io/engine-type"


class CoreMetricsParams(Parameters):
    engineLabelKey: str = ENGINE_LABEL
    defaultEngine: str = "vllm"
    engineConfigs: list[EngineConfig] = Field(default_factory=list)


@register("core-metrics-extractor")
class CoreMetricsExtractor(Extractor):
    """vLLM's queue, running, KV usage and LoRA series (datastore.py), by vLLM's names; and
    each engine's customMetrics as endpoint attributes (the endpoint-attribute filter and
    scorer read them), the engine chosen by the pod's engine label, else defaultEngine."""

    Params = CoreMetricsParams
    params: CoreMetricsParams

    def setup(self) -> None:
        p = self.params
        engines = {e.name: e for e in p.engineConfigs}
        if p.defaultEngine and p.defaultEngine not in engines | dict.fromkeys(BUILTIN_ENGINES):
            raise ConfigError(f"parameters.defaultEngine: {p.defaultEngine!r} not in engineConfigs")
        self.custom = {
            name: [
                CustomMetric(c.attributeKey, MetricSpec.parse(c.metricSpec))
                for c in e.customMetrics
            ]
            for name, e in engines.items()
        }
        self.default = p.defaultEngine or "vllm"

    def custom_metrics(self, labels: dict[str, str]) -> list[CustomMetric]:
        """The custom metrics of the endpoint's engine; none for an engine not configured
        (upstream fails that endpoint's extraction)."""
        engine = labels.get(self.params.engineLabelKey or ENGINE_LABEL) or labels.get(
            LEGACY_ENGINE_LABEL
        )
        return self.custom.get(engine or self.default, [])

    def inert(self) -> dict[str, str]:
        why = "metric names are vLLM's; other engines' mappings are not configurable"
        out = {}
        for i, engine in enumerate(self.params.engineConfigs):
            for key in sorted(engine.model_fields_set - {"name", "customMetrics"}):
                out[f"engineConfigs[{i}].{key}"] = why
        if not any(self.custom.values()):
            for key in ("engineLabelKey", "defaultEngine"):
                if key in self.params.model_fields_set:
                    out[key] = "it chooses an engine's customMetrics, and none are configured"
        return out


@register("endpoint-notification-source")
class EndpointNotificationSource(DataSource):
    """Endpoint add/remove events; the KV-event producer it feeds learns pods from the
    events' topics (kv@<pod>@<model>)."""


@register("k8s-notification-source")
class NotificationSource(DataSource):
    class Params(Parameters):
        group: str = ""
        version: str = ""
        kind: str = ""

    def inert(self) -> dict[str, str]:
        return {
            k: "Kubernetes object watches are not wired"
            for k in sorted(self.params.model_fields_set)
        }


@register("models-data-source")
class ModelsDataSource(DataSource):
    class Params(Parameters):
        scheme: str = "http"
        path: str = "/v1/models"
        interval: str | None = None

    def inert(self) -> dict[str, str]:
        return {k: "served models are not polled" for k in sorted(self.params.model_fields_set)}


@register("models-data-extractor")
class ModelsExtractor(Extractor):
    pass


class FileDiscoveryParams(Parameters):
    path: str
    watchFile: bool = False


@register("file-discovery")
class FileDiscovery(Discovery):
    """Endpoints from a file instead of Kubernetes: `--endpoints-file` is the same thing."""

    Params = FileDiscoveryParams
    params: FileDiscoveryParams


@register("openai-parser")
class OpenAIParser(Parser):
    """OpenAI completions and chat bodies: what request.py reads."""


@register("vllmhttp-parser")
class VllmHTTPParser(Parser):
    pass


@register("passthrough-parser")
class PassthroughParser(Parser):
    pass


GPU_UTILIZATION = "GPUUtilization/dcgm-extractor"  # upstream's key string for the attribute
GPU_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"


class DCGMParams(Parameters):
    scheme: Literal["http", "https"] = "http"
    path: str = "/metrics"
    port: int = Field(9400, ge=1, le=65535)
    insecureSkipVerify: bool = True
    useNodeAddress: bool = False
    interval: str = ""


@register("dcgm-data-source")
class DCGMDataSource(DataSource):
    """NVIDIA's DCGM exporter beside each engine (a sidecar on the pod's address), scraped
    by the datastore on its own schedule for the dcgm-extractor it feeds (source/dcgm)."""

    stability = "alpha"
    Params = DCGMParams
    params: DCGMParams

    def setup(self) -> None:
        p = self.params
        self.every = go_duration(p.interval, "interval") if p.interval else 0.0
        self.verify = p.scheme == "http" or not p.insecureSkipVerify
        self.extractor: DCGMExtractor | None = None

    def attach(self, extractor: Extractor) -> None:
        super().attach(extractor)
        if isinstance(extractor, DCGMExtractor):
            self.extractor = extractor

    def url(self, ep: Endpoint) -> str:
        p = self.params
        return f"{p.scheme}://{ep.address}:{p.port}{p.path}"

    def period(self, base: float) -> float:
        """The interval rounded to a multiple of the base scrape tick (at least one), as
        upstream rounds it to --refresh-metrics-interval; unset: every tick."""
        return max(round(self.every / base), 1) * base if base > 0 else self.every

    def read(self, text: str, into: Metrics) -> None:
        value = gpu_utilization(text)
        if value is not None:
            into.attributes[GPU_UTILIZATION] = value

    def inert(self) -> dict[str, str]:
        if self.extractor is None:
            why = "no dcgm-extractor listed under it in dataLayer.sources: nothing scraped"
            return {k: why for k in sorted(self.params.model_fields_set)}
        if self.params.useNodeAddress:
            return {"useNodeAddress": "endpoints carry no node address: the pod's is scraped"}
        return {}


@register("dcgm-extractor")
class DCGMExtractor(Extractor):
    """The highest GPU utilisation DCGM reports for the pod, 0-100 read as a fraction, as
    the attribute GPUUtilization/dcgm-extractor (extractor/dcgm). Upstream keeps only the
    samples whose `pod` label names the endpoint's pod; the endpoints here carry no pod name,
    so every sample counts, which is the same for the exporter beside one pod."""

    stability = "alpha"


def gpu_utilization(text: str) -> float | None:
    values = [s.value for s in promtext.samples(text, (GPU_UTIL_METRIC,))]
    return max(values) / 100.0 if values else None
