"""`pdserve validate FILE...` and `pdserve convert FILE --to VERSION`: every problem on its
own line, exit 2 when there is any."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    if argv[0] == "convert":
        return convert(argv)
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


def convert(argv: list[str]) -> int:
    """The file's documents in another API version, for a person upgrading a manifest (or
    going back); what the target cannot hold is named on stderr, one line a field."""
    ap = argparse.ArgumentParser(
        prog="pdserve convert",
        description="Print LLMInferenceService manifests converted to another API version.",
    )
    ap.add_argument("file")
    ap.add_argument("--to", required=True, choices=("v1alpha1", "v1alpha2"))
    args = ap.parse_args(argv[1:])
    import yaml

    from pdserve.api import ManifestError
    from pdserve.api.convert_file import convert_file

    try:
        docs, dropped = convert_file(args.file, f"serving.kserve.io/{args.to}")
    except ManifestError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    for line in dropped:
        print(line, file=sys.stderr)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0
