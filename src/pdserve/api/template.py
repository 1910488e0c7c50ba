"""The subset of Go templates KServe's configs use, with missing keys as errors.

`{{ .Spec.Model.Name }}`, `{{ .ObjectMeta.Namespace }}`, `{{ ChildName .ObjectMeta.Name
"-suffix" }}`, `{{ or X "default" }}`, `{{ .GlobalConfig.IngressGatewayName }}`. Fields are
Go names (Model, DataLocal) looked up in the JSON object by their JSON spelling.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)|[^\s()]+')


class TemplateError(ValueError):
    pass


class _Missing:
    def __init__(self, path: str) -> None:
        self.path = path

    def __bool__(self) -> bool:
        return False


# Kubernetes object names (DNS labels) are at most 63 characters; knative's kmeta.ChildName,
# which KServe uses for every child resource and as the `ChildName` template function,
# keeps that bound by splicing in the 32-character md5 hex of the parent.
_LONGEST = 63
_HEAD = _LONGEST - 32


def child_name(parent: str, suffix: str) -> str:
    """knative's kmeta.ChildName: `parent + suffix`, hashed down to 63 characters.

    Every rendered object and every reference to one (secretName, --pool-name, the
    HTTPRoute backend, ...) goes through this one function, and it must agree with the
    operator's names byte for byte, so it follows knative exactly: a parent too long for
    the suffix keeps its first `31 - len(suffix)` characters plus md5(parent); a suffix of
    31 characters or more hashes parent + suffix and pads with the suffix's start.
    """
    if len(parent) <= _LONGEST - len(suffix):
        return parent + suffix
    if _HEAD - len(suffix) <= 0:
        digest = hashlib.md5((parent + suffix).encode(), usedforsecurity=False).hexdigest()
        name = parent[:_HEAD] + digest
        name += suffix[: max(0, _LONGEST - len(name))]
        return re.sub(r"[^a-zA-Z0-9]+$", "", name)  # a DNS label ends alphanumeric
    digest = hashlib.md5(parent.encode(), usedforsecurity=False).hexdigest()
    return parent[: _HEAD - len(suffix)] + digest + suffix


def _field(obj: Any, name: str) -> Any:
    if not isinstance(obj, dict):
        return None
    for key in (name, name[:1].lower() + name[1:]):
        if key in obj:
            return obj[key]
    lowered = name.lower()
    for key, value in obj.items():
        if key.lower() == lowered:
            return value
    return None


def _lookup(path: str, data: dict[str, Any]) -> Any:
    obj: Any = data
    for part in path.strip(".").split("."):
        value = _field(obj, part)
        if value is None:
            return _Missing(path)
        obj = value
    return obj


def _eval(tokens: list[str], data: dict[str, Any]) -> Any:
    head, args = tokens[0], tokens[1:]
    if head == "or":
        values = [_atom(a, data) for a in args]
        for v in values:
            if v:
                return v
        return values[-1] if values else None
    if head == "ChildName":
        if len(args) != 2:
            raise TemplateError("ChildName takes two arguments")
        parent, suffix = (_strict(_atom(a, data)) for a in args)
        return child_name(str(parent), str(suffix))
    if args:
        raise TemplateError(f"unknown function {head!r}")
    return _strict(_atom(head, data))


def _atom(token: str, data: dict[str, Any]) -> Any:
    if token[0] in '"`':
        return token[1:-1].replace('\\"', '"')
    if token.startswith("."):
        return _lookup(token, data)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    raise TemplateError(f"unexpected {token!r}")


def _strict(value: Any) -> Any:
    if isinstance(value, _Missing):
        raise TemplateError(f"map has no entry for key {value.path!r}")
    return value


def render(text: str, data: dict[str, Any]) -> str:
    def one(match: re.Match[str]) -> str:
        tokens = [t for t in _TOKEN.findall(match.group(1)) if t not in "()"]
        if not tokens:
            raise TemplateError("empty action")
        value = _strict(_eval(tokens, data))
        return (
            "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        )

    return _ACTION.sub(one, text)


def render_tree(obj: Any, data: dict[str, Any], path: str = "") -> Any:
    """Render every string in a JSON tree; errors name the field they occur in."""
    if isinstance(obj, dict):
        return {k: render_tree(v, data, f"{path}.{k}" if path else k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [render_tree(v, data, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, str) and "{{" in obj:
        try:
            return render(obj, data)
        except TemplateError as err:
            raise TemplateError(f"{path}: template {obj.strip()!r}: {err}") from None
    return obj
