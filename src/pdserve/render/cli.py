"""`pdserve render`, `pdserve explain` and `pdserve model-job` (render/model_job.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _parser(cmd: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"pdserve {cmd}")
    ap.add_argument("file")
    ap.add_argument("--config-dir", help="folder of LLMInferenceServiceConfig files")
    ap.add_argument("--namespace", "-n", help="namespace of the rendered objects")
    if cmd == "render":
        ap.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
        ap.add_argument(
            "--self-signed-certs",
            action="store_true",
            help="fill the TLS Secret with a fresh self-signed pair (otherwise it "
            "is rendered empty, for the operator or cert tooling to fill)",
        )
    return ap


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "model-job":
        from pdserve.render import model_job

        return model_job.main(argv)
    args = _parser(cmd).parse_args(argv[1:])
    from pdserve.api import ManifestError, resolve_file

    try:
        services = resolve_file(args.file, args.config_dir, args.namespace)
    except ManifestError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    if cmd == "explain":
        from pdserve.render.explain import explain

        print("\n\n".join(explain(s) for s in services))
        return 0
    from pdserve.render import render

    objs: list[dict[str, Any]] = []
    for s in services:
        certs = None
        if args.self_signed_certs:
            from pdserve.tls import self_signed_pem

            certs = self_signed_pem()
        objs += render(s, args.namespace, certs=certs)
    if args.output == "json":
        json.dump(objs, sys.stdout, indent=2)
        print()
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0
