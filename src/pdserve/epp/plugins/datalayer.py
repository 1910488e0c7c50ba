"""The data layer, request parsers and discovery: plugins whose work is done at the edges
(datastore.py scrapes /metrics, request.py parses bodies, kv_events.py listens), declared
here so configs name them, reference them, and are checked."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pdserve.epp.framework import Parameters, Passive, register


class DataSource(Passive):
    pass


class Extractor(Passive):
    pass


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


@register("core-metrics-extractor")
class CoreMetricsExtractor(Extractor):
    """vLLM's queue, running, KV usage and LoRA series (datastore.py), by vLLM's names."""

    class Params(Parameters):
        engineConfigs: list[dict[str, Any]] = Field(default_factory=list)
        defaultEngine: str = ""

    def inert(self) -> dict[str, str]:
        why = "metric names are vLLM's; other engines' mappings are not configurable"
        return {k: why for k in sorted(self.params.model_fields_set)}


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
