"""`pdserve install`: print the operator's install manifests, to pipe to `kubectl apply -f -`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pdserve.flags import OneLineParser
from pdserve.install.manifests import install
from pdserve.install.write_config import dump_yaml


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="pdserve install",
        description="Print the pdserve operator's install manifests (CRDs, RBAC, operator "
        "Deployment, webhooks, presets): pdserve install | kubectl apply -f -",
    )
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.add_argument(
        "--cert-manager",
        action="store_true",
        help="webhook certificates from cert-manager (a self-signed Issuer and a Certificate, "
        "CA injected by cert-manager) instead of the operator's own",
    )
    return p


def render(output: str, cert_manager: bool) -> str:
    objs = install(cert_manager)
    if output == "json":
        doc: dict[str, Any] = {"apiVersion": "v1", "kind": "List", "items": objs}
        return json.dumps(doc, indent=2) + "\n"
    return dump_yaml(objs)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    sys.stdout.write(render(args.output, args.cert_manager))
    return 0
