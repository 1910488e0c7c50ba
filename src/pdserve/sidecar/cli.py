"""`pdserve sidecar`: llm-d routing sidecar flags, env defaults and Go boolean forms.

The flags are llm-d-router v0.10's pd-sidecar flags (and the older ones it replaced, kept
working); every bad value is one line and exit 2, before anything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from pdserve.errors import UserError
from pdserve.flags import GoStyleParser, add_bool, parse_bool

# Upstream's --kv-connector values; only nixlv2 has engines on this machine.
KV_CONNECTORS = ("nixlv2", "shared-storage", "sglang", "mooncake", "offloading")
TLS_STAGES = ("prefiller", "decoder", "encoder")
MAX_PORT = 65535


def _env_bool(name: str) -> bool:
    """Upstream's env default: an unparsable value is ignored, not an error."""
    try:
        return parse_bool(os.environ.get(name, "false"))
    except argparse.ArgumentTypeError:
        return False


def parser() -> argparse.ArgumentParser:
    ap = GoStyleParser(
        prog="pdserve sidecar", description="P/D routing sidecar in front of a decode engine."
    )
    ap.add_argument("--port", type=int, default=8000, help="port the sidecar listens on")
    ap.add_argument("--host", default="0.0.0.0", help="address to listen on")
    ap.add_argument(
        "--model-server-port", type=int, default=None, help="the local engine's port (8001)"
    )
    ap.add_argument(
        "--vllm-port", type=int, default=8001, help="deprecated: use --model-server-port"
    )
    ap.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="the engine's data-parallel ranks: rank i listens on --port+i and is served by "
        "the engine on --model-server-port+i",
    )
    ap.add_argument(
        "--kv-connector", default=None, help=f"one of {', '.join(KV_CONNECTORS)} (nixlv2)"
    )
    ap.add_argument("--connector", default="nixlv2", help="nixlv2 (default), nixl or lmcache")
    add_bool(
        ap,
        "--enable-prefiller-sampling",
        _env_bool("ENABLE_PREFILLER_SAMPLING"),
        "pick the prefill target at random among those the header names (else the first)",
    )
    ap.add_argument(
        "--prefill-max-retries",
        type=int,
        default=0,
        help="retries of a prefill answering 502/503/504 or unreachable; once they run out "
        "the error is the client's (0: no retries, a failed prefill falls back to decode-only)",
    )
    ap.add_argument(
        "--prefill-retry-backoff", default="200ms", help="Go duration between prefill retries"
    )
    ap.add_argument(
        "--decode-chunk-size",
        type=int,
        default=0,
        help="chat completions decode in chunks of this many tokens (0: off)",
    )
    ap.add_argument("--configuration", default="", help="sidecar config as YAML or JSON text")
    ap.add_argument(
        "--configuration-file", type=Path, default=None, help="sidecar config file (YAML/JSON)"
    )
    ap.add_argument("--enable-tls", default="", help="comma-separated stages called over HTTPS")
    ap.add_argument(
        "--tls-insecure-skip-verify", default="", help="comma-separated stages not to verify"
    )
    add_bool(ap, "--secure-proxy", True, "serve HTTPS (self-signed unless --cert-path)")
    ap.add_argument("--cert-path", default="", help="folder holding tls.crt and tls.key")
    add_bool(ap, "--prefiller-use-tls", False, "call prefillers over HTTPS")
    add_bool(ap, "--decoder-use-tls", False, "call the local engine over HTTPS")
    add_bool(ap, "--prefiller-tls-insecure-skip-verify", False, "do not verify prefillers' certs")
    add_bool(ap, "--decoder-tls-insecure-skip-verify", False, "do not verify the engine's cert")
    add_bool(ap, "--enable-ssrf-protection", False, "only call allowed prefill hosts")
    add_bool(
        ap,
        "--release-unclaimed-kv",
        True,
        "pdserve: free a prefill's KV lease on its side channel when the client leaves or "
        "the decode leg fails (off for engines whose side channel takes no release message)",
    )
    ap.add_argument(
        "--inference-pool-namespace", default=os.environ.get("INFERENCE_POOL_NAMESPACE", "")
    )
    ap.add_argument("--inference-pool-name", default=os.environ.get("INFERENCE_POOL_NAME", ""))
    ap.add_argument(
        "--inference-pool",
        default=os.environ.get("INFERENCE_POOL", ""),
        help="the InferencePool as namespace/name (or name, in namespace default)",
    )
    ap.add_argument(
        "--allowed-prefill-hosts",
        default="",
        help="comma-separated prefill host:port targets (SSRF allow-list outside Kubernetes)",
    )
    ap.add_argument(
        "--allowed-prefill-endpoints-file",
        type=Path,
        default=None,
        help="the local runner's endpoints file: its prefill endpoints are the allow-list",
    )
    _timeouts(ap)
    ap.add_argument(
        "--max-in-flight",
        type=int,
        default=512,
        help="requests in flight through one listener past which the next is a 429 with "
        "Retry-After (0: no bound)",
    )
    ap.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=64 * 2**20,
        help="a larger request body is a 413 (default 64 MiB)",
    )
    ap.add_argument("--log-level", default="info")
    ap.add_argument("-v", type=int, default=0, help="klog verbosity (accepted, maps to debug)")
    return ap


def _timeouts(ap: argparse.ArgumentParser) -> None:
    """Each leg's timeouts in seconds; a hung engine is a 504 after them (timeouts.py). The
    first-byte ones default to the flag that bounded that wait before they existed."""
    ap.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to connect to the engine"
    )
    ap.add_argument(
        "--first-byte-timeout",
        type=float,
        default=None,
        help="seconds from sending to the local engine until its response headers (an "
        "unstreamed answer's are sent when it is done; default: --read-timeout)",
    )
    ap.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        help="seconds the local engine may stay silent mid-answer before a 504",
    )
    ap.add_argument(
        "--prefill-timeout", type=float, default=300.0, help="seconds a prefill leg may take"
    )
    ap.add_argument(
        "--prefill-connect-timeout",
        type=float,
        default=None,
        help="seconds to connect to a prefiller (default: --connect-timeout)",
    )
    ap.add_argument(
        "--prefill-first-byte-timeout",
        type=float,
        default=None,
        help="seconds from sending to a prefiller until its response headers "
        "(default: --prefill-timeout)",
    )
    ap.add_argument(
        "--prefill-read-timeout",
        type=float,
        default=None,
        help="seconds a prefiller may stay silent mid-answer (default: --read-timeout)",
    )


# Derived timeout defaults: dest -> the dest whose value it takes when not given.
_TIMEOUT_DEFAULTS = {
    "first_byte_timeout": "read_timeout",
    "prefill_connect_timeout": "connect_timeout",
    "prefill_first_byte_timeout": "prefill_timeout",
    "prefill_read_timeout": "read_timeout",
}
TIMEOUTS = ("connect_timeout", "read_timeout", "prefill_timeout", *_TIMEOUT_DEFAULTS)


def settings(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The flags, the config document under them, then every check: (args, the document's
    keys that have no effect here). UserError, one line, for anything wrong."""
    args = parser().parse_args(argv)
    from pdserve.sidecar import config

    doc = config.load(args.configuration, args.configuration_file)
    ignored = config.merge(args, doc, _explicit(argv))
    _resolve(args, _explicit(argv))
    _check(args)
    return args, ignored


def _explicit(argv: list[str]) -> set[str]:
    """The dests given on the command line: a parse in which nothing has a default."""
    probe = parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def _resolve(args: argparse.Namespace, explicit: set[str]) -> None:
    """Derived values, with upstream's precedence: --model-server-port, then --vllm-port,
    then the document's model-server-port, then its vllm-port, then the default."""
    if args.model_server_port is None or (
        "vllm_port" in explicit and "model_server_port" not in explicit
    ):
        args.model_server_port = args.vllm_port
    args.deprecated = ["--vllm-port: use --model-server-port"] if "vllm_port" in explicit else []
    args.connector = _connector(args, explicit)
    tls, skip = (
        _stages(args.enable_tls, "--enable-tls"),
        _stages(args.tls_insecure_skip_verify, "--tls-insecure-skip-verify"),
    )
    args.prefiller_use_tls = args.prefiller_use_tls or "prefiller" in tls
    args.decoder_use_tls = args.decoder_use_tls or "decoder" in tls
    skip_prefiller = args.prefiller_tls_insecure_skip_verify or "prefiller" in skip
    args.prefiller_tls_insecure_skip_verify = skip_prefiller
    args.decoder_tls_insecure_skip_verify = args.decoder_tls_insecure_skip_verify or (
        "decoder" in skip
    )
    if args.inference_pool:
        args.inference_pool_namespace, args.inference_pool_name = _pool(args.inference_pool)
    for dest, source in _TIMEOUT_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(args, source))
    from pdserve.epp.framework import parse_duration  # Go durations, read as the EPP reads them

    try:
        args.prefill_retry_backoff_s = parse_duration(args.prefill_retry_backoff)
    except ValueError as err:
        raise UserError(f"--prefill-retry-backoff: {err}") from None


def _connector(args: argparse.Namespace, explicit: set[str]) -> str:
    """--kv-connector (v0.10's name) over --connector (the older one); a value whose engines
    this machine cannot run is refused rather than served as nixlv2."""
    from pdserve.sidecar import legs

    if args.connector not in legs.CONNECTORS:
        raise UserError(
            f"--connector {args.connector!r}: expected one of {', '.join(legs.CONNECTORS)}"
        )
    kv = args.kv_connector
    if kv is None:
        return str(args.connector)
    if kv not in KV_CONNECTORS:
        raise UserError(f"--kv-connector {kv!r}: expected one of {', '.join(KV_CONNECTORS)}")
    if kv != "nixlv2":
        raise UserError(f"--kv-connector {kv!r}: not supported by pdserve, which runs nixlv2")
    if "connector" in explicit and args.connector == "lmcache":
        raise UserError("--kv-connector nixlv2 and --connector lmcache disagree; give one")
    return "nixlv2"


def _stages(value: str | list[str], flag: str) -> set[str]:
    stages = value if isinstance(value, list) else [v for v in value.split(",") if v.strip()]
    out = {s.strip() for s in stages}
    for stage in sorted(out):
        if stage not in TLS_STAGES:
            raise UserError(f"{flag}: stage {stage!r}: expected one of {', '.join(TLS_STAGES)}")
    return out


def _pool(value: str) -> tuple[str, str]:
    parts = value.split("/")
    if len(parts) > 2 or not all(parts):
        raise UserError(f"--inference-pool {value!r}: expected namespace/name or name")
    return (parts[0], parts[1]) if len(parts) == 2 else ("default", parts[0])


def _check(args: argparse.Namespace) -> None:
    """Upstream's checks on values it reads, plus ours on the timeouts."""
    dp = args.data_parallel_size
    if dp < 1:
        raise UserError(f"--data-parallel-size must be a positive integer, got {dp}")
    _port_range("--port", args.port, dp, lowest=0 if dp == 1 else 1)
    _port_range("--model-server-port", args.model_server_port, dp, lowest=1)
    if args.prefill_max_retries < 0:
        raise UserError(f"--prefill-max-retries must be 0 or more, got {args.prefill_max_retries}")
    if args.prefill_max_retries > 0 and args.prefill_retry_backoff_s <= 0:
        raise UserError(
            "--prefill-retry-backoff must be positive when --prefill-max-retries > 0, "
            f"got {args.prefill_retry_backoff}"
        )
    if args.decode_chunk_size < 0:
        raise UserError(
            "--decode-chunk-size must be 0 (off) or a positive token count, "
            f"got {args.decode_chunk_size}"
        )
    for dest in TIMEOUTS:
        value = getattr(args, dest)
        if not value > 0 or value == float("inf"):  # NaN too
            flag = "--" + dest.replace("_", "-")
            raise UserError(f"{flag} must be a positive number of seconds, got {value}")
    if args.max_in_flight < 0:
        raise UserError(f"--max-in-flight must be 0 (no bound) or more, got {args.max_in_flight}")
    if args.max_request_body_bytes < 1:
        raise UserError(
            f"--max-request-body-bytes must be a positive byte count, got "
            f"{args.max_request_body_bytes}"
        )


def _port_range(flag: str, port: int, ranks: int, lowest: int) -> None:
    if not lowest <= port <= MAX_PORT:
        raise UserError(f"{flag} {port} is out of range [{lowest}, {MAX_PORT}]")
    if port + ranks - 1 > MAX_PORT:
        raise UserError(f"{flag} {port} with --data-parallel-size {ranks} goes past {MAX_PORT}")


def main(argv: list[str]) -> int:
    args, ignored = settings(argv[1:])
    from pdserve.logs import event, setup

    log = setup("sidecar", "debug" if args.v >= 5 else args.log_level)
    from pdserve.sidecar import allowlist
    from pdserve.sidecar.proxy import Options, Sidecar, serve

    allow: allowlist.AllowList = allowlist.AllowAll()
    if args.enable_ssrf_protection:
        if args.allowed_prefill_endpoints_file:
            allow = allowlist.EndpointsFileAllowList(args.allowed_prefill_endpoints_file)
        elif args.allowed_prefill_hosts:
            try:
                allow = allowlist.StaticAllowList(args.allowed_prefill_hosts.split(","))
            except ValueError as err:  # a bare host would allow every port of it
                raise UserError(f"--allowed-prefill-hosts: {err}") from None
        elif args.inference_pool_name and args.inference_pool_namespace:
            try:
                pods = allowlist.KubernetesPods(
                    args.inference_pool_namespace, args.inference_pool_name
                )
            except Exception as err:  # kubernetes.config.ConfigException outside a pod
                raise UserError(
                    "--enable-ssrf-protection with --inference-pool-name needs the pod's "
                    f"Kubernetes service account ({err}); outside Kubernetes use "
                    "--allowed-prefill-hosts"
                ) from None
            pool = allowlist.PoolAllowList(pods)
            pool.start()
            allow = pool
        else:
            raise UserError(
                "--enable-ssrf-protection needs --allowed-prefill-hosts, "
                "--allowed-prefill-endpoints-file or --inference-pool "
                "(or --inference-pool-namespace and --inference-pool-name)"
            )
    opts = Options(
        vllm_port=args.model_server_port,
        connector=args.connector,
        decoder_tls=args.decoder_use_tls,
        decoder_insecure=args.decoder_tls_insecure_skip_verify,
        prefiller_tls=args.prefiller_use_tls,
        prefiller_insecure=args.prefiller_tls_insecure_skip_verify,
        allow=allow,
        prefill_timeout=args.prefill_timeout,
        prefill_connect_timeout=args.prefill_connect_timeout,
        prefill_first_byte_timeout=args.prefill_first_byte_timeout,
        prefill_read_timeout=args.prefill_read_timeout,
        connect_timeout=args.connect_timeout,
        first_byte_timeout=args.first_byte_timeout,
        read_timeout=args.read_timeout,
        max_in_flight=args.max_in_flight,
        max_request_body=args.max_request_body_bytes,
        prefill_max_retries=args.prefill_max_retries,
        prefill_retry_backoff=args.prefill_retry_backoff_s,
        prefiller_sampling=args.enable_prefiller_sampling,
        data_parallel_size=args.data_parallel_size,
        port=args.port,
        pod_ip=os.environ.get("POD_IP", ""),
        decode_chunk_size=args.decode_chunk_size,
        release_unclaimed_kv=args.release_unclaimed_kv,
    )
    ssl_ctx = None
    if args.secure_proxy:
        from pdserve.tls import server_context

        ssl_ctx = server_context(args.cert_path)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    ready: dict[str, Any] = {
        "port": args.port,
        "model_server_port": args.model_server_port,
        "data_parallel_size": args.data_parallel_size,
        "connector": args.connector,
        "tls": bool(ssl_ctx),
        "ssrf_protection": args.enable_ssrf_protection,
        "prefill_max_retries": args.prefill_max_retries,
        "decode_chunk_size": args.decode_chunk_size,
        "release_unclaimed_kv": args.release_unclaimed_kv,
        "max_in_flight": args.max_in_flight,
        "timeouts": {dest: getattr(args, dest) for dest in TIMEOUTS},
    }
    if ignored:
        ready["ignored_configuration"] = ignored
    if args.deprecated:
        ready["deprecated_flags"] = args.deprecated

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(serve(Sidecar(opts), args.host, ssl_ctx, stop))
        await asyncio.sleep(0)
        event(log, "ready", **ready)
        await task

    try:
        asyncio.run(run())
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from err
    return 0
