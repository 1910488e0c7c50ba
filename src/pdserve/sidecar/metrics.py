"""Sidecar metrics: outcome per request and the latency of each leg."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "pdserve_sidecar_requests",
            "Requests by path and outcome (pd, decode-only, fallback, rejected, prefill-failed, "
            "overloaded: past --max-in-flight, a 429).",
            ["path", "outcome"],
            registry=r,
        )
        self.fallbacks = Counter(
            "pdserve_sidecar_prefill_fallbacks",
            "Prefill failures served decode-only, by reason.",
            ["reason"],
            registry=r,
        )
        self.prefill_retries = Counter(
            "pdserve_sidecar_prefill_retries",
            "Prefill legs sent again after a 502/503/504 or no answer (--prefill-max-retries).",
            registry=r,
        )
        self.in_flight = Gauge(
            "pdserve_sidecar_requests_in_flight",
            "Requests being served by this listener (--max-in-flight bounds them).",
            registry=r,
        )
        self.prefill = Histogram(
            "pdserve_sidecar_prefill_duration_seconds",
            "Prefill leg latency.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            "pdserve_sidecar_decode_duration_seconds",
            "Decode leg latency (to the last byte).",
            buckets=_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "pdserve_sidecar_time_to_first_token_seconds",
            "From request arrival to the first response byte from the decoder.",
            buckets=_BUCKETS,
            registry=r,
        )
