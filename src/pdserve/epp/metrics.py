"""The EPP's Prometheus metrics, under the Gateway API Inference Extension names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5, 30)


class EppMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        model = ["model_name", "target_model_name"]
        self.requests = Counter(
            "inference_model_request_total", "Requests per model.", model, registry=r
        )
        self.errors = Counter(
            "inference_model_request_error_total",
            "Failed requests.",
            [*model, "error_code"],
            registry=r,
        )
        self.duration = Histogram(
            "inference_model_request_duration_seconds",
            "Time to a routing decision.",
            model,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_model_input_tokens",
            "Prompt size (estimated tokens).",
            model,
            buckets=(64, 256, 1024, 4096, 16384, 65536),
            registry=r,
        )
        # These two are fed by the gateway's watching filter (epp/envoy.py), which copies
        # each answer to the EPP; behind a gateway without it they stay empty.
        self.output_tokens = Histogram(
            "inference_model_output_tokens",
            "Completion tokens, as the answer's usage reports them.",
            model,
            buckets=(1, 8, 32, 128, 512, 2048, 8192),
            registry=r,
        )
        self.running = Gauge(
            "inference_model_running_requests",
            "Routed requests whose answer has not ended.",
            ["model_name"],
            registry=r,
        )
        self.pool_kv = Gauge(
            "inference_pool_average_kv_cache_utilization",
            "Mean KV-cache usage of the pool.",
            ["name"],
            registry=r,
        )
        self.pool_queue = Gauge(
            "inference_pool_average_queue_size", "Mean waiting queue.", ["name"], registry=r
        )
        self.pool_ready = Gauge(
            "inference_pool_ready_pods", "Endpoints with fresh metrics.", ["name"], registry=r
        )
        self.e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Scheduling cycle latency.",
            buckets=_LATENCY,
            registry=r,
        )
        self.plugin = Histogram(
            "inference_extension_scheduler_plugin_duration_seconds",
            "Per-plugin latency.",
            ["plugin_type", "plugin_name"],
            buckets=_LATENCY,
            registry=r,
        )
        self.prefix_size = Gauge(
            "inference_extension_prefix_indexer_size", "Blocks in the prefix index.", registry=r
        )
        self.prefix_hit = Gauge(
            "inference_extension_prefix_indexer_hit_ratio",
            "Share of requests whose prefix was indexed.",
            registry=r,
        )
        self.queue_size = Gauge(
            "inference_extension_flow_control_queue_size",
            "Requests waiting in flow control, per priority band.",
            ["priority"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Time a dispatched request waited in flow control.",
            ["priority"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60),
            registry=r,
        )
        self.pd = Counter("pdserve_epp_pd_decisions", "P/D decisions.", ["decision"], registry=r)
        for d in ("prefill-decode", "decode-only"):
            self.pd.labels(d)
