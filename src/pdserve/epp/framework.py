"""Plugin interfaces in the spirit of llm-d-router's scheduling framework: a registry by type
name, one pydantic parameters model per plugin class, references between plugins declared on
the parameter fields so the loader resolves them once."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pdserve.epp.types import Cycle, Endpoint, ProfileResult, Request, Result
from pdserve.errors import UserError
from pdserve.validation_errors import path_of, reason

Stability = Literal["alpha", "beta"]


class ConfigError(UserError):
    """A bad EndpointPickerConfig; the message starts with the path of the problem."""


class Parameters(BaseModel):
    """A plugin's parameters: upstream rejects unknown ones since v0.9, so do we."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass(frozen=True)
class Ref:
    """Field metadata: the value names another plugin that must be a `kind`."""

    kind: str  # a class name in this framework or plugins (resolved lazily: no import cycle)


@dataclass(frozen=True)
class ProfileRef:
    """Field metadata: the value names a scheduling profile (checked only when given)."""


class Plugin:
    type_name: ClassVar[str] = ""
    Params: ClassVar[type[Parameters]] = Parameters
    stability: ClassVar[Stability] = "beta"

    def __init__(self, name: str, params: Parameters | dict[str, Any] | None = None) -> None:
        self.name = name
        self.params = params if isinstance(params, Parameters) else parse(self, params or {})
        self.refs: dict[str, Plugin] = {}  # parameter path -> the plugin it names
        self.setup()

    def setup(self) -> None:
        """Derive state from parameters; raise ConfigError on values the model cannot judge."""

    def bind(self, plugins: dict[str, Plugin], profiles: Sequence[str]) -> None:
        """After references resolve: pick up implicit partners (e.g. the default producer)."""

    def inert(self) -> dict[str, str]:
        """Parameters given but not acted on here: path -> why. `--check` prints them."""
        return {}

    def hand_over(self) -> list[Plugin]:
        """Plugins this one built from its own parameters (a v0.2-v0.4 scorer's index). The
        loader registers them, so the server finds them (KV events) and the scheduler runs
        their hooks as if configured; from then on this plugin no longer forwards to them."""
        return []


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)"


def parse_duration(text: str) -> float:
    """Seconds from a Go duration as time.ParseDuration reads it (1m30s, 1.5h, 200ms, 10µs):
    upstream's flags and parameters are Go durations, so one text must mean the same here.
    A bare number is refused, as Go does ("missing unit"), except "0"; so is a sign, since
    every duration here is an interval or a timeout. ValueError says which."""
    if text == "0":
        return 0.0
    if not re.fullmatch(f"(?:{_PART})+", text):
        raise ValueError(f"not a duration (e.g. 200ms, 2s, 1m30s), got {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in re.findall(_PART, text))


def go_duration(text: str, key: str) -> float:
    """parse_duration for a plugin parameter: the error names the parameter."""
    try:
        return parse_duration(text)
    except ValueError as err:
        raise ConfigError(f"parameters.{key}: {err}") from None


def parse(cls: Plugin | type[Plugin], raw: dict[str, Any]) -> Parameters:
    try:
        return cls.Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(one_line(err, cls.type_name)) from None


def one_line(err: ValidationError, type_name: str) -> str:
    """Pydantic's first error as `parameters.<path>: <what>`: a config has one problem at a
    time on screen, the way upstream's strict decoder reports it."""
    e = err.errors()[0]
    loc = path_of(tuple(e["loc"]))
    path = f"parameters.{loc}" if loc else "parameters"
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown parameter of {type_name}"
    msg = reason(e)
    return f"{path}: {msg}, got {e.get('input')!r}" if "input" in e else f"{path}: {msg}"


def references(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(path, metadata, value) of every set Ref/ProfileRef field, nested models included."""
    for key, info in type(model).model_fields.items():
        value = getattr(model, key)
        path = f"{prefix}{info.alias or key}"
        if isinstance(value, BaseModel):
            yield from references(value, f"{path}.")
        for meta in info.metadata:
            if isinstance(meta, Ref | ProfileRef) and value:
                if isinstance(meta, ProfileRef) and key not in model.model_fields_set:
                    continue
                yield path, meta, value


class Filter(Plugin):
    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        """Endpoint name -> score in [0, 1] (the scheduler clamps)."""
        raise NotImplementedError


class Picker(Plugin):
    def pick_many(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> list[Endpoint]:
        raise NotImplementedError

    def pick(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> Endpoint | None:
        chosen = self.pick_many(cycle, scored)
        return chosen[0] if chosen else None


class ProfileHandler(Plugin):
    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        """Profiles to run next, given those already run; [] ends the cycle."""
        raise NotImplementedError

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        raise NotImplementedError

    def finish(self, cycle: Cycle, req: Request, result: Result) -> None:
        """After the pre-request hooks: rewrite what they must not see (data-parallel port)."""


class PreRequest(Plugin):
    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        raise NotImplementedError


ResponsePhase = Literal["watched", "started", "complete"]


class ResponseComplete(Plugin):
    """Hears how a routed request's answer goes, as the gateway's watching filter reports it
    (extproc.ExtProc._watch through Director.response): state a pre-request hook keeps per
    request (in-flight counts) is released here, so it lives as long as the request does.
    Phases: "watched" once the filter has the request (it will end, as upstream binds state
    to the stream's life), "started" at the first response body chunk, "complete" once the
    answer or the stream ended, whichever way. `now` is the director's clock reading."""

    def response(self, request_id: str, phase: ResponsePhase, now: float) -> None:
        raise NotImplementedError


class Passive(Plugin):
    """A plugin whose work is done outside the scheduling cycle (data sources, extractors,
    parsers, discovery, flow-control policies): loaded, validated and referenced."""


REGISTRY: dict[str, type[Plugin]] = {}


def register(*names: str) -> Callable[[type[Plugin]], type[Plugin]]:
    """Register a plugin class under its type name and any (deprecated) aliases."""

    def deco(cls: type[Plugin]) -> type[Plugin]:
        cls.type_name = names[0]
        for n in names:
            REGISTRY[n] = cls
        return cls

    return deco


def plugin_class(type_name: str) -> type[Plugin]:
    from pdserve.epp import plugins  # noqa: F401  (registers the built-ins)

    cls = REGISTRY.get(type_name)
    if cls is None:
        raise ConfigError(f"unknown plugin type {type_name!r}")
    return cls


def make(type_name: str, name: str, params: dict[str, Any] | None = None) -> Plugin:
    return plugin_class(type_name)(name, params or {})


def kind(name: str) -> type[Plugin]:
    """A plugin base class by name, for Ref metadata (the plugins package defines some)."""
    from pdserve.epp import plugins

    for cls in (
        Filter,
        Scorer,
        Picker,
        ProfileHandler,
        PreRequest,
        ResponseComplete,
        Passive,
        Plugin,
    ):
        if cls.__name__ == name:
            return cls
    found = plugins.KINDS.get(name)
    if found is None:
        raise KeyError(name)
    return found
