"""`pdserve operator`: the flags, the connection to the cluster, then kopf's loop."""

from __future__ import annotations

import argparse
import os
import socket
import uuid
from typing import Any

from pdserve.errors import UserError
from pdserve.flags import OneLineParser
from pdserve.operator.certs import DEFAULT_NAMESPACE, SECRET


def parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="pdserve operator",
        description="Reconcile LLMInferenceServices (serving.kserve.io) on the current cluster.",
    )
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--namespace", "-n", action="append", help="watch this namespace (repeatable)"
    )
    where.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    ap.add_argument(
        "--system-namespace",
        default=os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        help="where cluster-wide LLMInferenceServiceConfigs (the installed presets) and the "
        f"Lease live (default: the operator's own namespace, $POD_NAMESPACE, else "
        f"{DEFAULT_NAMESPACE}; KServe's is kserve)",
    )
    ap.add_argument("--webhook-port", type=int, default=9443, help="0 disables the webhooks")
    ap.add_argument("--webhook-cert-dir", help="folder with tls.crt and tls.key for the webhooks")
    ap.add_argument(
        "--cert-manager",
        action="store_true",
        help=f"cert-manager makes the Secret {SECRET} (in $POD_NAMESPACE, default "
        f"{DEFAULT_NAMESPACE}) and injects its CA: only read it (default: make it self-signed "
        "once, and inject its CA)",
    )
    ap.add_argument(
        "--health", default="http://0.0.0.0:8080/healthz", help="liveness endpoint (kopf's)"
    )
    ap.add_argument("--lease-name", default="pdserve-operator")
    ap.add_argument("--lease-seconds", type=int, default=15)
    ap.add_argument("--identity", help="this replica's name in the Lease (default: host + id)")
    return ap


def connect() -> Any:
    """The cluster from the pod's service account, else the kubeconfig; neither is a user
    error, not a traceback."""
    from kubernetes.config import ConfigException

    from pdserve.kube import ApiObjects

    try:
        return ApiObjects()
    except (ConfigException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            "no cluster to connect to: not in a pod with a service account, and no usable "
            f"kubeconfig (KUBECONFIG or ~/.kube/config): {first}"
        ) from None


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.webhook_port <= 65535:
        raise UserError(f"--webhook-port: {args.webhook_port} is not a port (0 disables)")
    if args.lease_seconds < 3:
        raise UserError("--lease-seconds: must be at least 3")
    if args.webhook_cert_dir and not os.path.isdir(args.webhook_cert_dir):
        raise UserError(f"--webhook-cert-dir: {args.webhook_cert_dir} is not a folder")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    _check(args)
    objects = connect()
    import kopf

    from pdserve.operator.handlers import Runtime, build_registry
    from pdserve.operator.leader import Elector

    identity = args.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    elector = Elector(objects, args.system_namespace, args.lease_name, identity, args.lease_seconds)
    namespaces = list(dict.fromkeys(args.namespace or []))
    rt = Runtime(
        objects,
        elector,
        args.system_namespace,
        namespaces,
        args.webhook_port,
        args.webhook_cert_dir,
        operator_namespace=os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        cert_manager=args.cert_manager,
    )
    watched = [*namespaces, args.system_namespace] if namespaces else []
    kopf.run(
        registry=build_registry(rt),
        standalone=True,  # kopf's own peering needs its CRDs; the Lease elects instead
        clusterwide=not watched,
        namespaces=list(dict.fromkeys(watched)),
        liveness_endpoint=args.health,
    )
    return 0
