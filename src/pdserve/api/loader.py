"""From YAML files to typed objects, with every problem as one line naming where it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from pdserve.api.models import (
    API_VERSION,
    CONFIG_KIND,
    SERVICE_KIND,
    LLMInferenceService,
    LLMInferenceServiceConfig,
)
from pdserve.errors import UserError

KINDS: dict[str, type[LLMInferenceService] | type[LLMInferenceServiceConfig]] = {
    SERVICE_KIND: LLMInferenceService,
    CONFIG_KIND: LLMInferenceServiceConfig,
}
Document = LLMInferenceService | LLMInferenceServiceConfig


class ManifestError(UserError):
    """One or more problems, each a full line: `FILE: path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def path_of(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_replicas_or_scaling()]", "function-after[_scheme()]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: ErrorDetails) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {err.get('input')!r}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {err.get('input')!r}"
    if kind in ("string_type",):
        return f"must be a string, got {err.get('input')!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be a boolean, got {err.get('input')!r}"
    if kind in ("list_type",):
        return "must be a list"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be an object"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"]


def validation_problems(where: str, err: ValidationError, under: str = "") -> list[str]:
    """One line per error; `under` prefixes paths when a part (a spec) was validated alone."""
    problems = []
    for e in err.errors():
        path = ".".join(p for p in (under, path_of(e["loc"])) if p)
        msg = _message(e)
        if msg.startswith("uri: ") and path.endswith("model"):
            path, msg = path + ".uri", msg[5:]
        problems.append(f"{where}: {path}: {msg}" if path else f"{where}: {msg}")
    return problems


def parse(doc: Any, where: str) -> Document:
    if not isinstance(doc, dict):
        raise ManifestError(
            [f"{where}: expected a mapping (a Kubernetes object), got {type(doc).__name__}"]
        )
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ManifestError(
            [f"{where}: kind: expected {SERVICE_KIND} or {CONFIG_KIND}, got {kind!r}"]
        )
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError(
            [f"{where}: apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}"]
        )
    try:
        obj = KINDS[kind].model_validate(doc)
    except ValidationError as err:
        raise ManifestError(validation_problems(where, err)) from None
    problems = []
    if kind == SERVICE_KIND:
        if not obj.metadata.name:
            problems.append(f"{where}: metadata.name: required field is missing")
        if obj.spec.model is None or not obj.spec.model.uri:
            problems.append(f"{where}: spec.model.uri: required field is missing")
    if problems:
        raise ManifestError(problems)
    return obj


def read_documents(path: str | Path) -> list[tuple[Any, str]]:
    """Raw YAML documents with a label for messages (`FILE` or `FILE#N`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ManifestError([f"{path}: cannot read: {err.strerror}"]) from None
    except UnicodeDecodeError as err:  # YAML manifests are UTF-8 text
        raise ManifestError([f"{path}: not UTF-8 text (byte {err.start})"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ManifestError([f"{path}:{line} YAML syntax error: {problem}"]) from None
    if not docs:
        raise ManifestError([f"{path}: empty file: no YAML documents"])
    if len(docs) == 1:
        return [(docs[0], str(path))]
    return [(d, f"{path}#{i + 1}") for i, d in enumerate(docs)]


def load(path: str | Path, config_dir: str | Path | None = None) -> list[Document]:
    """Every document of a file (services and configs), then the configs of `config_dir`."""
    out: list[Document] = []
    problems: list[str] = []
    sources = [path]
    if config_dir is not None:
        try:
            entries = list(Path(config_dir).iterdir())
        except OSError as err:
            raise ManifestError([f"{config_dir}: cannot read config dir: {err.strerror}"]) from None
        sources += sorted(p for p in entries if p.suffix in (".yaml", ".yml", ".json"))
    for source in sources:
        try:
            docs = read_documents(source)
        except ManifestError as err:
            problems += err.problems
            continue
        for doc, where in docs:
            try:
                out.append(parse(doc, where))
            except ManifestError as err:
                problems += err.problems
    if problems:
        raise ManifestError(problems)
    return out
