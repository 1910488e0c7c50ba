"""Prometheus metrics under vLLM's names, labels and types, so the EPP and dashboards
written for vLLM read the sim engine unchanged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pdserve import wire

_LATENCY = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)


class EngineMetrics:
    def __init__(self, model: str, cache_info: dict[str, str]) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.values = {"model_name": model, "engine": "0"}
        r = self.registry

        # The per-engine children are kept (label lookups are a hot path), and exist from the
        # start, so every series is exported before the first request, as vLLM does.
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r).labels(**self.values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=r).labels(**self.values)

        def hist(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, labels, buckets=_LATENCY, registry=r).labels(**self.values)

        self.running = gauge("vllm:num_requests_running", "Requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be processed.")
        self.kv_usage = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.gpu_usage = gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (deprecated name).")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in tokens."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        # As vLLM: a request's whole prompt, counted at its first token, cached or not.
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.computed_tokens = counter(
            "pdserve_sim:prefill_tokens_computed",
            "Prompt tokens actually run through the model (not cached, not pulled).",
        )
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.success = Counter(
            "vllm:request_success", "Finished requests.", [*labels, "finished_reason"], registry=r
        )
        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token in seconds.")
        self.itl = hist("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.")
        self.tpot = hist(
            "vllm:time_per_output_token_seconds", "Mean time per output token of a request."
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds", "End to end request latency in seconds."
        )
        self.queue_time = hist(
            "vllm:request_queue_time_seconds", "Time spent in the WAITING phase for request."
        )
        self.prefill_time = hist(
            "vllm:request_prefill_time_seconds", "Time spent in the PREFILL phase for request."
        )
        self.decode_time = hist(
            "vllm:request_decode_time_seconds", "Time spent in the DECODE phase for request."
        )
        self.kv_pulls = Counter(
            "pdserve_sim:kv_pulls",
            "P/D KV pulls by transport and outcome.",
            [*labels, "transport", "outcome"],
            registry=r,
        )
        self.kv_pull_bytes = counter(
            "pdserve_sim:kv_pull_bytes", "Bytes of KV pulled from producers."
        )
        self.leases = gauge("pdserve_sim:kv_leases", "P/D producer requests holding blocks.")
        self.lease_refusals = counter(
            "pdserve_sim:kv_lease_refusals",
            "P/D prefills answered 503: past --max-kv-leases, or short of blocks leases pin.",
        )
        self.lora_info = Gauge(
            wire.METRIC_LORA_INFO,
            "Running stats on lora requests.",
            ["running_lora_adapters", "max_lora", "waiting_lora_adapters"],
            registry=r,
        )
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig.",
            list(cache_info),
            registry=r,
        )
        info.labels(**cache_info).set(1)

    def observe_loras(self, running: list[str], waiting: list[str], max_lora: int) -> None:
        """vLLM's vllm:lora_requests_info: the adapters as labels, the time as the value, so
        a reader takes the series with the newest value."""
        self.lora_info.labels(
            running_lora_adapters=",".join(running),
            waiting_lora_adapters=",".join(waiting),
            max_lora=str(max_lora),
        ).set_to_current_time()

    def observe_state(self, running: int, waiting: int, usage: float, leases: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(usage)
        self.gpu_usage.set(usage)
        self.leases.set(leases)
