"""EndpointPickerConfig YAML to plugin instances and profiles, in one place.

Defaulting as upstream: a plugin's name defaults to its type; a profile entry's weight
defaults to 1 (floats accepted); one profile and no handler means single-profile-handler;
a profile without a picker gets max-score-picker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from pdserve.epp.framework import (
    ConfigError,
    Filter,
    Picker,
    Plugin,
    PreRequest,
    ProfileHandler,
    Scorer,
    make,
)

API_VERSIONS = ("inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1")


@dataclass
class Profile:
    name: str
    filters: list[Filter] = field(default_factory=list)
    scorers: list[tuple[Scorer, float]] = field(default_factory=list)
    picker: Picker | None = None


@dataclass
class Config:
    plugins: dict[str, Plugin]
    profiles: dict[str, Profile]
    handler: ProfileHandler
    pre_request: list[PreRequest]
    extra: dict[str, Any] = field(default_factory=dict)  # featureGates, saturationDetector...

    def describe(self) -> str:
        lines = [f"profile handler: {self.handler.name} ({self.handler.type_name})"]
        for p in self.profiles.values():
            parts = [f"filter {f.name}" for f in p.filters]
            parts += [f"scorer {s.name} x{w:g}" for s, w in p.scorers]
            parts.append(f"picker {p.picker.name if p.picker else '-'}")
            lines.append(f"profile {p.name}: " + ", ".join(parts))
        for plugin in self.plugins.values():
            params = {k: v for k, v in plugin.params.items()}
            ignored = f" (ignored: {', '.join(plugin.ignored)})" if plugin.ignored else ""
            lines.append(f"plugin {plugin.name}: {plugin.type_name} {params}{ignored}")
        return "\n".join(lines)


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def load(text: str, source: str = "config") -> Config:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{source}:{where} YAML syntax error: {getattr(err, 'problem', None) or err}"
        ) from None
    if not isinstance(doc, dict):
        raise _err(source, "expected an EndpointPickerConfig mapping")
    if doc.get("kind", "EndpointPickerConfig") != "EndpointPickerConfig":
        raise _err(f"{source}: kind", f"expected EndpointPickerConfig, got {doc.get('kind')!r}")
    if doc.get("apiVersion") not in (None, *API_VERSIONS):
        raise _err(f"{source}: apiVersion", f"expected one of {', '.join(API_VERSIONS)}")
    plugins: dict[str, Plugin] = {}
    for i, entry in enumerate(doc.get("plugins") or []):
        path = f"{source}: plugins[{i}]"
        if not isinstance(entry, dict) or "type" not in entry:
            raise _err(path, "each plugin needs a type")
        name = entry.get("name") or entry["type"]
        if name in plugins:
            raise _err(f"{path}.name", f"duplicate plugin name {name!r}")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise _err(f"{path}.parameters", "must be a mapping")
        try:
            plugins[name] = make(entry["type"], name, params)
        except ConfigError as err:
            raise _err(path, str(err)) from None
    profiles = _profiles(doc, plugins, source)
    for plugin in plugins.values():
        bind = getattr(plugin, "bind", None)
        if bind is not None:
            try:
                bind(plugins, list(profiles))
            except ConfigError as err:
                raise _err(f"{source}: plugin {plugin.name}", str(err)) from None
    handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        raise _err(f"{source}: plugins", "more than one profile handler")
    if not handlers:
        if len(profiles) != 1:
            raise _err(f"{source}: plugins", "several profiles need a profile handler")
        handler = make("single-profile-handler", "single-profile-handler", {})
        assert isinstance(handler, ProfileHandler)
        handlers = [handler]
        plugins[handler.name] = handler
    pre = [p for p in plugins.values() if isinstance(p, PreRequest)]
    extra = {
        k: doc[k] for k in ("featureGates", "saturationDetector", "flowControl", "data") if k in doc
    }
    return Config(plugins, profiles, handlers[0], pre, extra)


def _profiles(doc: dict[str, Any], plugins: dict[str, Plugin], source: str) -> dict[str, Profile]:
    entries = doc.get("schedulingProfiles") or []
    if not entries:
        raise _err(f"{source}: schedulingProfiles", "at least one profile is required")
    profiles: dict[str, Profile] = {}
    for i, entry in enumerate(entries):
        path = f"{source}: schedulingProfiles[{i}]"
        name = entry.get("name")
        if not name:
            raise _err(f"{path}.name", "required")
        profile = Profile(name)
        for j, ref in enumerate(entry.get("plugins") or []):
            rpath = f"{path}.plugins[{j}]"
            plugin = plugins.get(ref.get("pluginRef"))
            if plugin is None:
                raise _err(
                    f"{rpath}.pluginRef", f"no plugin named {ref.get('pluginRef')!r} in plugins"
                )
            weight = ref.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise _err(f"{rpath}.weight", f"must be a number, got {weight!r}")
            if isinstance(plugin, Filter):
                profile.filters.append(plugin)
            if isinstance(plugin, Scorer):
                profile.scorers.append((plugin, float(weight)))
            if isinstance(plugin, Picker):
                profile.picker = plugin
        if profile.picker is None:
            picker = make("max-score-picker", "max-score-picker", {})
            assert isinstance(picker, Picker)
            profile.picker = picker
            plugins.setdefault("max-score-picker", picker)
        profiles[name] = profile
    return profiles
