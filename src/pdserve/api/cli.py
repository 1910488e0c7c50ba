"""`pdserve validate FILE...`: every problem on its own line, exit 2 when there is any."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="pdserve validate", description="Check LLMInferenceService manifests."
    )
    ap.add_argument("files", nargs="+")
    ap.add_argument("--config-dir", help="folder of LLMInferenceServiceConfig files")
    args = ap.parse_args(argv[1:])
    from pdserve.api import ManifestError, resolve_file

    problems: list[str] = []
    for path in args.files:
        try:
            resolve_file(path, args.config_dir)
        except ManifestError as err:
            problems += err.problems
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{len(args.files)} file(s) valid")
    return 2 if problems else 0
