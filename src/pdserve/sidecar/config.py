"""`--configuration` / `--configuration-file`: llm-d-router v0.10's sidecar config document.

Upstream reads one YAML (or JSON) mapping keyed by flag names and applies a key only where
that flag was not given on the command line: an explicit flag wins, the document beats the
default. Keys are checked strictly (an unknown key is an error, as upstream's strict
unmarshal makes it), and a zero value or empty text counts as absent, as Go's `omitempty`
makes it. Keys that name upstream features pdserve does not run are accepted and reported
back, so a config written for upstream still starts here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pdserve.errors import UserError

Reader = Callable[[str, Any], Any]


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"--configuration: {key}: expected an integer, got {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"--configuration: {key}: expected true or false, got {value!r}")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UserError(f"--configuration: {key}: expected a string, got {value!r}")
    return value


def _stages(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"--configuration: {key}: expected a list of stages, got {value!r}")
    return list(value)


# key -> (argparse dest, how to read it); dest None: upstream's key, nothing here to set.
KEYS: dict[str, tuple[str | None, Reader]] = {
    "port": ("port", _int),
    "model-server-port": ("model_server_port", _int),
    "vllm-port": ("vllm_port", _int),
    "data-parallel-size": ("data_parallel_size", _int),
    "kv-connector": ("kv_connector", _text),
    "enable-ssrf-protection": ("enable_ssrf_protection", _bool),
    "enable-prefiller-sampling": ("enable_prefiller_sampling", _bool),
    "secure-proxy": ("secure_proxy", _bool),
    "cert-path": ("cert_path", _text),
    "enable-tls": ("enable_tls", _stages),
    "tls-insecure-skip-verify": ("tls_insecure_skip_verify", _stages),
    "inference-pool": ("inference_pool", _text),
    "prefill-max-retries": ("prefill_max_retries", _int),
    "prefill-retry-backoff": ("prefill_retry_backoff", _text),
    "decode-chunk-size": ("decode_chunk_size", _int),
    # Upstream features pdserve does not run: accepted, named in the ready line.
    "ec-connector": (None, _text),
    "mooncake-bootstrap-port": (None, _int),
    "p2p-connector-port": (None, _int),
    "enable-p2p-pull": (None, _bool),
    "pool-group": (None, _text),
    "max-idle-conns-per-host": (None, _int),
    "tracing": (None, _bool),
    "metrics-port": (None, _int),
}
# Pointer fields upstream: a false or 0 given in the document still counts.
_KEPT_ZERO = {"prefill-max-retries"}


def load(inline: str, file: Path | None) -> dict[str, Any]:
    """The document as a mapping ({} when neither flag is given)."""
    if inline and file is not None:
        raise UserError("--configuration and --configuration-file are mutually exclusive")
    name, text = "--configuration", inline
    if file is not None:
        name = "--configuration-file"
        try:
            text = file.read_text()
        except OSError as err:
            raise UserError(f"{name} {file}: {err.strerror}") from None
    if not text.strip():
        return {}
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{name}: not YAML or JSON{where}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"{name}: expected a mapping of flag names, got {type(doc).__name__}")
    return doc


def merge(args: argparse.Namespace, doc: dict[str, Any], explicit: set[str]) -> list[str]:
    """Apply the document's keys to `args` where the flag was not given; return the keys
    that were accepted but have no effect here."""
    unknown = sorted(str(k) for k in doc if k not in KEYS)
    if unknown:
        raise UserError(f"--configuration: unknown key {unknown[0]!r}")
    ignored = []
    for key, value in doc.items():
        dest, read = KEYS[key]
        if value is None or (not value and key not in _KEPT_ZERO and value is not False):
            continue
        parsed = read(key, value)
        if dest is None:
            ignored.append(key)
        elif dest not in explicit:
            setattr(args, dest, parsed)
    return ignored
