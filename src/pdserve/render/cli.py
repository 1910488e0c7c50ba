"""`pdserve render` and `pdserve explain`."""

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
    return ap


def main(argv: list[str]) -> int:
    cmd = argv[0]
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
    from pdserve.tls import self_signed_pem

    objs: list[dict[str, Any]] = []
    for s in services:
        objs += render(s, args.namespace, certs=self_signed_pem())
    if args.output == "json":
        json.dump(objs, sys.stdout, indent=2)
        print()
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0
