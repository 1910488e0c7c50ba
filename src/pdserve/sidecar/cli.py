"""`pdserve sidecar`: llm-d routing sidecar flags, env defaults and Go boolean forms."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from pdserve.errors import UserError
from pdserve.flags import GoStyleParser, add_bool


def parser() -> argparse.ArgumentParser:
    ap = GoStyleParser(
        prog="pdserve sidecar", description="P/D routing sidecar in front of a decode engine."
    )
    ap.add_argument("--port", type=int, default=8000, help="port the sidecar listens on")
    ap.add_argument("--host", default="0.0.0.0", help="address to listen on")
    ap.add_argument("--vllm-port", type=int, default=8001, help="the local engine's port")
    ap.add_argument("--connector", default="nixlv2", help="nixlv2 (default), nixl or lmcache")
    add_bool(ap, "--secure-proxy", True, "serve HTTPS (self-signed unless --cert-path)")
    ap.add_argument("--cert-path", default="", help="folder holding tls.crt and tls.key")
    add_bool(ap, "--prefiller-use-tls", False, "call prefillers over HTTPS")
    add_bool(ap, "--decoder-use-tls", False, "call the local engine over HTTPS")
    add_bool(ap, "--prefiller-tls-insecure-skip-verify", False, "do not verify prefillers' certs")
    add_bool(ap, "--decoder-tls-insecure-skip-verify", False, "do not verify the engine's cert")
    add_bool(ap, "--enable-ssrf-protection", False, "only call allowed prefill hosts")
    ap.add_argument(
        "--inference-pool-namespace", default=os.environ.get("INFERENCE_POOL_NAMESPACE", "")
    )
    ap.add_argument("--inference-pool-name", default=os.environ.get("INFERENCE_POOL_NAME", ""))
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
    ap.add_argument("--prefill-timeout", type=float, default=300.0, help="seconds")
    ap.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to connect to an engine"
    )
    ap.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        help="seconds the local engine may stay silent (first token included) before a 504",
    )
    ap.add_argument("--log-level", default="info")
    ap.add_argument("-v", type=int, default=0, help="klog verbosity (accepted, maps to debug)")
    return ap


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    from pdserve.logs import event, setup

    log = setup("sidecar", "debug" if args.v >= 5 else args.log_level)
    from pdserve.sidecar import allowlist, legs
    from pdserve.sidecar.proxy import Options, Sidecar, serve

    if args.connector not in legs.CONNECTORS:
        raise UserError(
            f"--connector {args.connector!r}: expected one of {', '.join(legs.CONNECTORS)}"
        )
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
                "--allowed-prefill-endpoints-file or "
                "--inference-pool-namespace and --inference-pool-name"
            )
    opts = Options(
        vllm_port=args.vllm_port,
        connector=args.connector,
        decoder_tls=args.decoder_use_tls,
        decoder_insecure=args.decoder_tls_insecure_skip_verify,
        prefiller_tls=args.prefiller_use_tls,
        prefiller_insecure=args.prefiller_tls_insecure_skip_verify,
        allow=allow,
        prefill_timeout=args.prefill_timeout,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
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

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(serve(Sidecar(opts), args.host, args.port, ssl_ctx, stop))
        await asyncio.sleep(0)
        event(
            log,
            "ready",
            port=args.port,
            vllm_port=args.vllm_port,
            connector=args.connector,
            tls=bool(ssl_ctx),
            ssrf_protection=args.enable_ssrf_protection,
        )
        await task

    try:
        asyncio.run(run())
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from err
    return 0
