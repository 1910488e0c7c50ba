"""From YAML files to typed objects, with every problem as one line naming where it is.

A document is checked against the models of the version it is written in (so a message
names the user's own field), then converted to v1alpha2, the one version the rest of
pdserve works on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pdserve.api import models
from pdserve.api.convert import V1ALPHA1, V1ALPHA2, VERSIONS, to_v1alpha2
from pdserve.api.models import CONFIG_KIND, SERVICE_KIND, dump
from pdserve.api.v1alpha2 import LLMInferenceService, LLMInferenceServiceConfig
from pdserve.errors import UserError
from pdserve.validation_errors import Wording, path_of

Model = type[BaseModel]
KINDS: dict[tuple[str, str], Model] = {
    (V1ALPHA1, SERVICE_KIND): models.LLMInferenceService,
    (V1ALPHA1, CONFIG_KIND): models.LLMInferenceServiceConfig,
    (V1ALPHA2, SERVICE_KIND): LLMInferenceService,
    (V1ALPHA2, CONFIG_KIND): LLMInferenceServiceConfig,
}
Document = LLMInferenceService | LLMInferenceServiceConfig


class ManifestError(UserError):
    """One or more problems, each a full line: `FILE: path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_INTEGER = "must be an integer, got {input!r}"
WORDING = Wording(
    {
        "extra_forbidden": "unknown field",
        "missing": "required field is missing",
        "greater_than_equal": "must be >= {ge}",
        "less_than_equal": "must be <= {le}",
        "literal_error": "must be {expected}, got {input!r}",
        "int_type": _INTEGER,
        "int_parsing": _INTEGER,
        "int_from_float": _INTEGER,
        "string_type": "must be a string, got {input!r}",
        "bool_type": "must be a boolean, got {input!r}",
        "bool_parsing": "must be a boolean, got {input!r}",
        "list_type": "must be a list",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
    }
)


def validation_problems(where: str, err: ValidationError, under: str = "") -> list[str]:
    """One line per error; `under` prefixes paths when a part (a spec) was validated alone."""
    problems = []
    for e in err.errors():
        path = ".".join(p for p in (under, path_of(e["loc"])) if p)
        msg = WORDING.describe(e)
        if msg.startswith("uri: ") and path.endswith("model"):
            path, msg = path + ".uri", msg[5:]
        problems.append(f"{where}: {path}: {msg}" if path else f"{where}: {msg}")
    return problems


def check(doc: Any, where: str) -> BaseModel:
    """`doc` validated against the models of its own apiVersion and kind."""
    if not isinstance(doc, dict):
        raise ManifestError(
            [f"{where}: expected a mapping (a Kubernetes object), got {type(doc).__name__}"]
        )
    kind, version = doc.get("kind"), doc.get("apiVersion")
    if kind not in (SERVICE_KIND, CONFIG_KIND):
        raise ManifestError(
            [f"{where}: kind: expected {SERVICE_KIND} or {CONFIG_KIND}, got {kind!r}"]
        )
    if version not in VERSIONS:
        raise ManifestError(
            [f"{where}: apiVersion: expected {' or '.join(VERSIONS)}, got {version!r}"]
        )
    try:
        obj = KINDS[(version, kind)].model_validate(doc)
    except ValidationError as err:
        raise ManifestError(validation_problems(where, err)) from None
    problems = []
    if kind == SERVICE_KIND:
        meta, model = doc.get("metadata") or {}, (doc.get("spec") or {}).get("model") or {}
        if not meta.get("name"):
            problems.append(f"{where}: metadata.name: required field is missing")
        if not model.get("uri"):
            problems.append(f"{where}: spec.model.uri: required field is missing")
    if problems:
        raise ManifestError(problems)
    return obj


def to_hub(doc: dict[str, Any], where: str) -> Document:
    """A validated document (as dumped) in v1alpha2, remembering the version it came in."""
    written_as = doc["apiVersion"]
    if written_as == V1ALPHA1:
        doc = to_v1alpha2(doc)
    model = KINDS[(V1ALPHA2, doc["kind"])]
    try:
        obj = model.model_validate(doc)
    except ValidationError as err:  # v1alpha1 that v1alpha2 cannot hold
        raise ManifestError(validation_problems(f"{where} (as {V1ALPHA2})", err)) from None
    if isinstance(obj, LLMInferenceService):
        return obj.as_written(written_as)
    assert isinstance(obj, LLMInferenceServiceConfig)
    return obj


def parse(doc: Any, where: str) -> Document:
    """One document, of either version, as v1alpha2."""
    return to_hub(dump(check(doc, where)), where)


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
