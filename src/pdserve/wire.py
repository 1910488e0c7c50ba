"""Names and shapes fixed by the wire contract (PROTOCOLS.md), shared by every component.

Kept in one place so that the EPP, the sidecar, the engines and the runner
cannot drift apart on a header name or a label value.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

# --- HTTP headers -----------------------------------------------------------
PREFILLER_HEADER = "x-prefiller-host-port"  # set by the EPP, read by the decode sidecar
PREFILLER_URL_HEADER = "x-prefiller-url"  # legacy form of the same
ENCODER_HEADER = "x-encoder-hosts-ports"  # set by the EPP: the encode endpoints (E/P/D)
DATA_PARALLEL_HEADER = "x-data-parallel-host-port"  # set by the EPP: the chosen rank's address
DESTINATION_HEADER = "x-gateway-destination-endpoint"  # EPP -> Envoy ORIGINAL_DST
REQUEST_ID_HEADER = "x-request-id"
SESSION_HEADER = "x-session-token"
# The InferenceObjective a request belongs to (its priority) and its fairness flow: llm-d's
# names first, the Gateway API Inference Extension's as aliases.
OBJECTIVE_HEADERS = ("x-llm-d-inference-objective", "x-gateway-inference-objective")
FAIRNESS_HEADERS = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
CRITICALITY_HEADER = "x-gateway-inference-criticality"
# The largest request body the EPP reads (bytes); past it, a 413 before any parsing.
MAX_REQUEST_BODY = 8 * 2**20
# Why the EPP refused a request (llm-d-router's values), on its 429 and 503 answers.
DROPPED_HEADER = "x-llm-d-request-dropped-reason"
DROPPED_SATURATED = "rejected-saturated"
DROPPED_NO_ENDPOINTS = "rejected-no-endpoints"
DROPPED_TTL_EXPIRED = "rejected-ttl-expired"
ENVOY_LB_NAMESPACE = "envoy.lb"
# Seconds a refused request (429, 503) is told to wait, by the EPP and the sidecar alike: a
# queue, a band or a listener that is full now frees up as soon as one answer ends.
RETRY_AFTER = "1"
# Endpoints the EPP names after its pick in that metadata, comma-separated: the gateway
# retries once, on the next one.
FALLBACKS = 1
# Envoy's response code details on the EPP's own answers: Envoy's local-reply mapper passes
# these untouched (they are already in vLLM's error shape).
EPP_DETAILS_PREFIX = "pdserve_epp_"

# --- Pod labels ------------------------------------------------------------
ROLE_LABEL = "llm-d.ai/role"
ROLE_PREFILL = "prefill"
ROLE_DECODE = "decode"
ROLE_BOTH = "both"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL = "app.kubernetes.io/name"
PART_OF_LABEL = "app.kubernetes.io/part-of"
KSERVE_COMPONENT_LABEL = "kserve.io/component"
# What rendered pods are selected by (Deployments, the workload Service, the InferencePool,
# the EPP Service): the API refuses a user label over one of these.
SELECTOR_LABELS = (COMPONENT_LABEL, NAME_LABEL, PART_OF_LABEL, KSERVE_COMPONENT_LABEL, ROLE_LABEL)

# --- InferencePool API (the one we render; GA's group is read as a fallback) ---
POOL_GROUP = "inference.networking.x-k8s.io"
POOL_VERSION = "v1alpha2"
POOL_GROUP_GA = "inference.networking.k8s.io"
POOL_VERSION_GA = "v1"

# --- Ports -----------------------------------------------------------------
SIDECAR_PORT = 8000
DECODE_ENGINE_PORT = 8001
PREFILL_ENGINE_PORT = 8000
EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090
KV_EVENTS_PORT = 5557

# --- vLLM metric names -----------------------------------------------------
METRIC_RUNNING = "vllm:num_requests_running"
METRIC_WAITING = "vllm:num_requests_waiting"
METRIC_KV_USAGE = "vllm:kv_cache_usage_perc"
METRIC_KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"
METRIC_LORA_INFO = "vllm:lora_requests_info"
METRIC_CACHE_CONFIG = "vllm:cache_config_info"

# --- KV transfer ------------------------------------------------------------
NIXL_CONNECTOR = "NixlConnector"


def prefill_kv_transfer_params() -> dict[str, Any]:
    """What a P/D proxy asks of the prefill engine (NixlConnector, producer side)."""
    return {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }


def error_body(
    message: str, status: int, type_: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error as vLLM 0.32's OpenAI server writes it, whole answers and SSE error events
    alike: `{"error": {message, type, param, code}}`, `code` the HTTP status. Every error body
    pdserve writes comes from here, so a client parses one shape whichever hop refused it."""
    return {
        "error": {
            "message": message,
            "type": type_ or error_type(status),
            "param": param,
            "code": status,
        }
    }


def error_type(status: int) -> str:
    """The `type` vLLM writes for a status: its own names where it has one, else the status
    phrase, as its handler for framework HTTP errors does ("Method Not Allowed")."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "InternalServerError" if status >= 500 else "BadRequestError"


# The names vLLM 0.32 gives the errors it raises itself (entrypoints' create_error_response).
_ERROR_TYPES = {
    400: "BadRequestError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
