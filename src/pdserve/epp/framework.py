"""Plugin interfaces in the spirit of the GIE scheduler, and the registry by type name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pdserve.epp.types import Cycle, Endpoint, ProfileResult, Request, Result
from pdserve.errors import UserError


class ConfigError(UserError):
    """A bad EndpointPickerConfig; the message starts with the path of the problem."""


class Plugin:
    type_name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        # Upstream (Go) plugins ignore parameters they do not know, and shipped configs rely
        # on it (a queue-scorer given hashBlockSize); they are kept and reported, not fatal.
        self.ignored = sorted(set(params) - set(self.defaults))
        self.params = {**self.defaults, **params}
        self.setup()

    def setup(self) -> None:
        """Check and derive parameters; raise ConfigError on bad values."""

    def number(self, key: str, minimum: float = 0) -> float:
        value = self.params[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigError(f"parameter {key}: must be a number >= {minimum}, got {value!r}")
        return value


class Filter(Plugin):
    def filter(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    def score(self, cycle: Cycle, req: Request, endpoints: list[Endpoint]) -> dict[str, float]:
        """Endpoint name -> score in [0, 1] (the scheduler clamps)."""
        raise NotImplementedError


class Picker(Plugin):
    def pick(self, cycle: Cycle, scored: list[tuple[Endpoint, float]]) -> Endpoint | None:
        raise NotImplementedError


class ProfileHandler(Plugin):
    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        """Profiles to run next, given those already run; [] ends the cycle."""
        raise NotImplementedError

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        raise NotImplementedError


class PreRequest(Plugin):
    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        raise NotImplementedError


REGISTRY: dict[str, type[Plugin]] = {}


def register(*names: str) -> Callable[[type[Plugin]], type[Plugin]]:
    """Register a plugin class under its type name and any aliases."""

    def deco(cls: type[Plugin]) -> type[Plugin]:
        cls.type_name = names[0]
        for n in names:
            REGISTRY[n] = cls
        return cls

    return deco


def make(type_name: str, name: str, params: dict[str, Any]) -> Plugin:
    from pdserve.epp import plugins  # noqa: F401  (registers the built-ins)

    cls = REGISTRY.get(type_name)
    if cls is None:
        raise ConfigError(f"unknown plugin type {type_name!r}")
    return cls(name, params)
