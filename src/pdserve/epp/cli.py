"""`pdserve epp` (flags mirror the upstream EPP) and `pdserve gateway-config`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pdserve import wire
from pdserve.epp.envoy import DECISION_DEADLINE
from pdserve.errors import UserError
from pdserve.flags import GoStyleParser, add_bool, duration

if TYPE_CHECKING:
    from pdserve.epp import datastore as ds
    from pdserve.epp.config import Config

# Upstream EPP flags that manifests pass and that have no meaning here.
_IGNORED = (
    "--zap-encoder",
    "--zap-log-level",
    "--cert-path",
    "--total-queued-requests-metric",
    "--kv-cache-usage-percentage-metric",
    "--lora-info-metric",
    "--v",
)
_IGNORED_BOOL = (
    "--secure-serving",
    "--enable-pprof",
    "--ha-enable-leader-election",
)


def positive_duration(text: str) -> float:
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def epp_parser() -> argparse.ArgumentParser:
    ap = GoStyleParser(prog="pdserve epp", description="The endpoint picker (Envoy ext_proc).")
    ap.add_argument("--pool-name", default="")
    ap.add_argument("--pool-namespace", default="default")
    ap.add_argument("--config-file")
    ap.add_argument("--config-text")
    ap.add_argument("--grpc-port", type=int, default=9002)
    ap.add_argument("--grpc-health-port", type=int, default=9003)
    ap.add_argument("--metrics-port", type=int, default=9090)
    ap.add_argument("--refresh-metrics-interval", type=duration, default=0.05)
    ap.add_argument("--endpoints", help="ADDR:PORT[@ROLE],... (outside Kubernetes)")
    ap.add_argument("--endpoints-file", help="JSON list of {address, port, labels}, followed")
    ap.add_argument(
        "--default-criticality",
        choices=("Critical", "Standard", "Sheddable"),
        help="legacy: the criticality of a request naming no InferenceObjective (else priority 0)",
    )
    ap.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=wire.MAX_REQUEST_BODY,
        help="a larger body is a 413, refused before it is parsed (default 8 MiB)",
    )
    ap.add_argument(
        "--inference-objectives",
        metavar="FILE",
        help="InferenceObjective manifests (YAML): the priorities objective headers name",
    )
    ap.add_argument(
        "--decision-deadline",
        type=positive_duration,
        default=DECISION_DEADLINE,
        help="a request still waiting in the EPP this long (the engine's tokenizer, flow "
        "control's queue) is answered 503, or 429 if queued (default 70s; Envoy waits 75s)",
    )
    ap.add_argument(
        "--model-server-metrics-scheme",
        choices=("http", "https"),
        default="http",
        help="how the engines' /metrics are scraped",
    )
    # Upstream's default: skip. Verifying trusts the system's CAs, or SSL_CERT_FILE's.
    add_bool(
        ap,
        "--model-server-metrics-https-insecure-skip-verify",
        True,
        "with https, accept any certificate",
    )
    ap.add_argument("--kv-events-endpoint", default="tcp://*:5557")
    # All interfaces, as the upstream EPP: in a pod, Envoy and the kubelet's gRPC probes
    # reach the pod IP. Local runs (runner, tests, benches) pass --host 127.0.0.1.
    ap.add_argument("--host", default="0.0.0.0", help="address the servers bind")
    ap.add_argument("--log-level", default="info")
    add_bool(ap, "--check", False, "load the config, print it resolved, and exit")
    add_bool(ap, "--allow-experimental-plugins", False, "allow Alpha plugins in the config")
    for flag in _IGNORED:
        ap.add_argument(flag, help=argparse.SUPPRESS)
    for flag in _IGNORED_BOOL:
        add_bool(ap, flag, False, argparse.SUPPRESS)
    return ap


def _config_text(args: argparse.Namespace) -> str:
    if args.config_text:
        return args.config_text
    if args.config_file:
        try:
            return Path(args.config_file).read_text()
        except OSError as err:
            raise UserError(f"--config-file {args.config_file}: {err.strerror}") from None
    from pdserve.render.epp_defaults import SINGLE

    return SINGLE


def _objectives(path: str | None, pool: str) -> dict[str, int]:
    if not path:
        return {}
    from pdserve.epp import objectives

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UserError(f"--inference-objectives {path}: {err.strerror}") from None
    return objectives.parse(text, path, pool)


def _custom_metrics(config: Config) -> ds.CustomMetrics | None:
    """The core metrics extractor's per-engine custom metrics, for the scraper to read."""
    from pdserve.epp.plugins.datalayer import CoreMetricsExtractor

    for plugin in config.plugins.values():
        if isinstance(plugin, CoreMetricsExtractor) and any(plugin.custom.values()):
            return plugin.custom_metrics
    return None


def _side_polls(config: Config) -> list[ds.SidePoll]:
    """Each dcgm-data-source the dataLayer section gives a dcgm-extractor to."""
    from pdserve.epp.plugins.datalayer import DCGMDataSource

    return [p for p in config.plugins.values() if isinstance(p, DCGMDataSource) and p.extractor]


def main(argv: list[str]) -> int:
    if argv[0] == "gateway-config":
        return gateway_config(argv[1:])
    args = epp_parser().parse_args(argv[1:])
    from pdserve.epp.config import load

    source = args.config_file or "--config-text"
    config = load(_config_text(args), source, args.allow_experimental_plugins)
    args.inference_objectives = _objectives(args.inference_objectives, args.pool_name)
    if args.check:
        print(config.describe())
        return 0
    from pdserve.logs import setup

    log = setup("epp", args.log_level)
    from pdserve.epp import datastore as ds

    if args.endpoints:
        src: ds.EndpointSource = ds.StaticSource(ds.parse_endpoints(args.endpoints))
    elif args.endpoints_file:
        src = ds.FileSource(args.endpoints_file)
    elif args.pool_name:
        src = ds.PoolSource(args.pool_namespace, args.pool_name)
    else:
        raise UserError("no endpoints: give --endpoints, --endpoints-file or --pool-name")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from pdserve.epp.server import serve

    try:
        store = ds.Datastore(
            src,
            args.refresh_metrics_interval,
            _custom_metrics(config),
            _side_polls(config),
            scheme=args.model_server_metrics_scheme,
            verify=not args.model_server_metrics_https_insecure_skip_verify,
        )
        asyncio.run(serve(args, config, store, log))
    except OSError as err:
        raise UserError(f"cannot serve: {err}") from None
    return 0


def gateway_config(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pdserve gateway-config",
        description="Write an Envoy bootstrap that routes with the EPP.",
    )
    ap.add_argument("--port", type=int, default=8080, help="gateway listener port")
    ap.add_argument("--epp-port", type=int, default=9002)
    ap.add_argument("--admin-port", type=int, default=9901)
    ap.add_argument(
        "--route-prefix",
        action="append",
        default=[],
        help="e.g. /default/my-llm (rewritten to /); repeatable",
    )
    ap.add_argument(
        "--body-mode",
        choices=("FULL_DUPLEX_STREAMED", "BUFFERED"),
        default="FULL_DUPLEX_STREAMED",
        help="how Envoy sends the request body to the EPP (duplex saves a round trip)",
    )
    add_bool(
        ap,
        "--watch",
        default=True,
        help="a second, non-blocking ext_proc filter that copies answers to the EPP for its "
        "in-flight and output-token metrics (--watch=false leaves them empty)",
    )
    ap.add_argument(
        "--route-timeout",
        type=duration,
        default=0.0,
        help="bound on a whole answer; 0 (default) leaves long generations unbounded",
    )
    ap.add_argument(
        "--stream-idle-timeout",
        type=duration,
        default=300.0,
        help="a stream silent this long is ended (default 300s)",
    )
    ap.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = ap.parse_args(argv)
    from pdserve.epp.envoy import binary, bootstrap

    boot = bootstrap(
        args.port,
        args.epp_port,
        args.admin_port,
        args.route_prefix,
        args.body_mode,
        watch=args.watch,
        route_timeout=args.route_timeout,
        stream_idle_timeout=args.stream_idle_timeout,
    )
    text = json.dumps(boot, indent=2)
    if args.output:
        Path(args.output).write_text(text)
        print(
            f"wrote {args.output}; run: {binary()} -c {args.output} --base-id {args.port}",
            file=sys.stderr,
        )
    else:
        print(text)
    return 0


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
