"""EndpointPickerConfig YAML to plugin instances and profiles, in one place.

Both API groups (`llm-d.ai/v1alpha1`, and the deprecated `inference.networking.x-k8s.io/
v1alpha1`) and every layout pdserve has met: v0.2-v0.4 (top-level saturationDetector with
thresholds, flat plugin parameters) and v0.9+ (flowControl, dataLayer, requestHandler).
Defaulting as upstream: a plugin's name defaults to its type; a profile entry's weight
defaults to 1 (floats accepted); one profile and no handler means single-profile-handler; a
profile without a picker gets max-score-picker. Errors are one line starting with the path."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pdserve.epp.framework import (
    ConfigError,
    Filter,
    Picker,
    Plugin,
    PreRequest,
    ProfileHandler,
    ProfileRef,
    Ref,
    Scorer,
    kind,
    make,
    one_line,
    plugin_class,
    references,
)
from pdserve.epp.types import Endpoint

API_VERSIONS = ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1")
FLOW_CONTROL_GATE = "flowControl"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PluginRefSpec(_Model):
    pluginRef: str


class SaturationDetectorSpec(_Model):
    """v0.9+: a pluginRef. Before: the utilization thresholds inline (still accepted; they
    configure an implicit utilization-detector)."""

    pluginRef: str = ""
    queueDepthThreshold: int | None = None
    kvCacheUtilThreshold: float | None = None
    metricsStalenessThreshold: str | None = None


class PriorityBand(_Model):
    priority: int | None = None  # required in priorityBands, not in the default templates
    maxBytes: int | str | None = None
    maxRequests: int | str | None = None
    fairnessPolicyRef: str = ""
    orderingPolicyRef: str = ""


class FlowControl(_Model):
    maxBytes: int | str | None = None
    maxRequests: int | str | None = None
    defaultRequestTTL: str | None = None
    noEndpointRequestTTL: str | None = None
    defaultPriorityBand: PriorityBand | None = None
    defaultNegativePriorityBand: PriorityBand | None = None
    priorityBands: list[PriorityBand] = Field(default_factory=list)
    usageLimitPolicyPluginRef: str = ""
    saturationDetector: SaturationDetectorSpec | None = None
    enableEviction: bool = False


class DataSource(_Model):
    pluginRef: str
    extractors: list[PluginRefSpec] = Field(default_factory=list)


class DataLayer(_Model):
    injectDefaults: bool | None = None
    sources: list[DataSource] = Field(default_factory=list)
    discovery: PluginRefSpec | None = None
    crossReplicaSyncerPluginRef: str = ""
    crossReplicaSyncInterval: str | None = None


class RequestHandler(_Model):
    parsers: list[PluginRefSpec] = Field(default_factory=list)


class SchedulingPlugin(_Model):
    pluginRef: str
    weight: float = 1.0


class SchedulingProfile(_Model):
    name: str
    plugins: list[SchedulingPlugin] = Field(default_factory=list)


class Document(_Model):
    apiVersion: str | None = None
    kind: str = "EndpointPickerConfig"
    featureGates: list[str] | dict[str, bool] = Field(default_factory=list)
    plugins: list[dict[str, Any]] = Field(default_factory=list)
    schedulingProfiles: list[SchedulingProfile] = Field(default_factory=list)
    dataLayer: DataLayer | None = None
    data: DataLayer | None = None  # the v0.5-v0.8 name of dataLayer
    flowControl: FlowControl | None = None
    requestHandler: RequestHandler | None = None
    saturationDetector: SaturationDetectorSpec | None = None
    parser: PluginRefSpec | None = None


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
    doc: Document = field(default_factory=Document)
    detector: Any = None  # the saturation detector admission asks (plugins.admission)
    admitters: list[Any] = field(default_factory=list)
    # flow_control.Settings when `featureGates` turns flow control on, else None: the legacy
    # path then sheds sheddable requests at saturation.
    flow: Any = None
    # The usage-limit policy flowControl names (plugins.flowcontrol); None: upstream's
    # default, dispatch while saturation is under 1.
    usage_limit: Any = None
    paths: dict[str, str] = field(default_factory=dict)  # plugin name -> plugins[i]
    rng: random.Random = field(default_factory=random.Random)

    def shed(self, endpoints: list[Endpoint], now: float) -> str | None:
        """Why a sheddable request is refused now, or None: the saturation detector (upstream
        rejects at saturation >= 1 when flow control is off), then each admitter."""
        from pdserve.epp.types import Cycle

        if self.detector is not None and self.detector.saturation(endpoints, now) >= 1.0:
            return f"{self.detector.name}: pool saturated"
        cycle = Cycle(now=now, rng=self.rng)
        for admitter in self.admitters:
            reason = admitter.admit(cycle, endpoints)
            if reason:
                return str(reason)
        return None

    def ignored(self) -> list[str]:
        """Every parameter accepted but not acted on, with the path a user would edit."""
        out = []
        for plugin in self.plugins.values():
            where = self.paths.get(plugin.name, f"plugin {plugin.name}")
            for key, why in plugin.inert().items():
                out.append(f"{where}.parameters.{key}: {why}")
        out += _flow_control_inert(self.doc.flowControl, self.flow is not None)
        for plugin in self.plugins.values():
            used = self.flow is not None and plugin is self.usage_limit
            if isinstance(plugin, kind("UsageLimitPolicy")) and not used:
                where = self.paths.get(plugin.name, f"plugin {plugin.name}")
                for key in sorted(plugin.params.model_fields_set):
                    out.append(f"{where}.parameters.{key}: no flow control uses this policy")
        if self.flow is None and self.detector is not None and self.detector.headroom:
            where = self.paths.get(self.detector.name, f"plugin {self.detector.name}")
            out.append(f"{where}.parameters.headroom: it shapes flow control's dispatch, off")
        return out

    def describe(self) -> str:
        lines = [f"profile handler: {self.handler.name} ({self.handler.type_name})"]
        for p in self.profiles.values():
            parts = [f"filter {f.name}" for f in p.filters]
            parts += [f"scorer {s.name} x{w:g}" for s, w in p.scorers]
            parts.append(f"picker {p.picker.name if p.picker else '-'}")
            lines.append(f"profile {p.name}: " + ", ".join(parts))
        for plugin in self.plugins.values():
            params = plugin.params.model_dump(by_alias=True, exclude_unset=True)
            lines.append(f"plugin {plugin.name}: {plugin.type_name} {params}")
        if self.detector is not None:
            lines.append(f"saturation detector: {self.detector.name}")
        ignored = self.ignored()
        lines.append(f"accepted, not acted on: {len(ignored) or 'none'}")
        lines += [f"  {line}" for line in ignored]
        return "\n".join(lines)


def flow_control_on(doc: Document) -> bool:
    gates = doc.featureGates
    if isinstance(gates, dict):
        return bool(gates.get(FLOW_CONTROL_GATE))
    return FLOW_CONTROL_GATE in gates


def _flow_control_inert(fc: FlowControl | None, on: bool) -> list[str]:
    """As upstream: with the feature gate off, flowControl is ignored but for its saturation
    detector (which the legacy admission uses)."""
    if fc is None:
        return []
    if not on:
        return [
            f"flowControl.{key}: ignored, the {FLOW_CONTROL_GATE} feature gate is off"
            for key in sorted(fc.model_fields_set - {"saturationDetector"})
        ]
    if fc.enableEviction:
        return ["flowControl.enableEviction: evicting dispatched requests is not implemented"]
    return []


def _err(path: str, msg: str) -> ConfigError:
    """`path: msg`, or `path.parameters.x: ...` when the plugin's message is a path too."""
    sep = "." if msg.startswith("parameters") else ": "
    return ConfigError(f"{path}{sep}{msg}")


def _document(text: str, source: str) -> Document:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{source}:{where} YAML syntax error: {getattr(err, 'problem', None) or err}"
        ) from None
    if not isinstance(raw, dict):
        raise _err(source, "expected an EndpointPickerConfig mapping")
    if raw.get("kind", "EndpointPickerConfig") != "EndpointPickerConfig":
        raise _err(f"{source}: kind", f"expected EndpointPickerConfig, got {raw.get('kind')!r}")
    if raw.get("apiVersion") not in (None, *API_VERSIONS):
        raise _err(f"{source}: apiVersion", f"expected one of {', '.join(API_VERSIONS)}")
    try:
        return Document.model_validate(raw)
    except ValidationError as err:
        line = one_line(err, "EndpointPickerConfig").removeprefix("parameters.")
        raise _err(source, line.replace("unknown parameter of", "unknown field of")) from None


def load(text: str, source: str = "config", allow_experimental: bool = False) -> Config:
    doc = _document(text, source)
    plugins: dict[str, Plugin] = {}
    paths: dict[str, str] = {}
    for i, entry in enumerate(doc.plugins):
        path = f"plugins[{i}]"
        name = _plugin(entry, path, source, plugins, allow_experimental)
        paths[name] = path
    if not doc.schedulingProfiles:
        raise _err(f"{source}: schedulingProfiles", "at least one profile is required")
    names = [p.name for p in doc.schedulingProfiles]
    for plugin in list(plugins.values()):
        _resolve(plugin, plugins, names, f"{source}: {paths[plugin.name]}")
    for plugin in list(plugins.values()):
        try:
            plugin.bind(plugins, names)
        except ConfigError as err:
            raise _err(f"{source}: {paths.get(plugin.name, plugin.name)}", str(err)) from None
    for plugin in list(plugins.values()):
        _adopt(plugin, plugins, paths, source)
    profiles = _profiles(doc, plugins, source)
    cfg = Config(plugins, profiles, _handler(plugins, profiles, source), [], doc, paths=paths)
    cfg.pre_request = [p for p in plugins.values() if isinstance(p, PreRequest)]
    _top_level(cfg, source)
    return cfg


def _plugin(
    entry: dict[str, Any],
    path: str,
    source: str,
    plugins: dict[str, Plugin],
    allow_experimental: bool,
) -> str:
    if not isinstance(entry, dict) or not entry.get("type"):
        raise _err(f"{source}: {path}", "each plugin needs a type")
    extra = set(entry) - {"name", "type", "parameters"}
    if extra:
        raise _err(f"{source}: {path}.{sorted(extra)[0]}", "unknown field of a plugin")
    try:
        cls = plugin_class(entry["type"])
    except ConfigError as err:
        raise _err(f"{source}: {path}.type", str(err)) from None
    if cls.stability == "alpha" and not allow_experimental:
        raise _err(
            f"{source}: {path}.type",
            f"{entry['type']} is an Alpha plugin; pass --allow-experimental-plugins to use it",
        )
    name = entry.get("name") or entry["type"]
    if name in plugins:
        raise _err(f"{source}: {path}.name", f"duplicate plugin name {name!r}")
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise _err(f"{source}: {path}.parameters", "must be a mapping")
    try:
        plugins[name] = cls(name, params)
    except ConfigError as err:
        raise _err(f"{source}: {path}", str(err)) from None
    return name


def _adopt(plugin: Plugin, plugins: dict[str, Plugin], paths: dict[str, str], source: str) -> None:
    """What a plugin built for itself joins the config under its derived name, reported at
    the path of the parameters it came from."""
    where = paths.get(plugin.name, plugin.name)
    for part in plugin.hand_over():
        if part.name in plugins:
            raise _err(
                f"{source}: {where}",
                f"the name of its own {part.type_name}, {part.name!r}, is taken",
            )
        plugins[part.name] = part
        paths[part.name] = where


def _resolve(plugin: Plugin, plugins: dict[str, Plugin], profiles: list[str], where: str) -> None:
    """Each declared reference names a plugin of the declared kind, or a profile: checked at
    load, since a wrong name would otherwise fail every request."""
    for path, meta, value in references(plugin.params):
        at = f"{where}.parameters.{path}"
        if isinstance(meta, ProfileRef):
            if value not in profiles:
                raise _err(at, f"no scheduling profile named {value!r}")
            continue
        assert isinstance(meta, Ref)
        plugin.refs[path] = _target(plugins, value, meta.kind, at)


def _target(plugins: dict[str, Plugin], name: str, want: str, at: str) -> Plugin:
    target = plugins.get(name)
    if target is None:
        raise _err(at, f"no plugin named {name!r} in plugins")
    if not isinstance(target, kind(want)):
        raise _err(at, f"{name!r} is a {target.type_name}, not a {_words(want)} plugin")
    return target


def _words(kind_name: str) -> str:
    """PrefixProducer -> 'prefix producer' (and Decider -> 'decider')."""
    return "".join(f" {c.lower()}" if c.isupper() else c for c in kind_name).strip()


def _profiles(doc: Document, plugins: dict[str, Plugin], source: str) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    for i, entry in enumerate(doc.schedulingProfiles):
        path = f"{source}: schedulingProfiles[{i}]"
        if not entry.name:
            raise _err(f"{path}.name", "required")
        profile = Profile(entry.name)
        for j, ref in enumerate(entry.plugins):
            plugin = plugins.get(ref.pluginRef)
            if plugin is None:
                raise _err(
                    f"{path}.plugins[{j}].pluginRef",
                    f"no plugin named {ref.pluginRef!r} in plugins",
                )
            if isinstance(plugin, Filter):
                profile.filters.append(plugin)
            if isinstance(plugin, Scorer):
                profile.scorers.append((plugin, ref.weight))
            if isinstance(plugin, Picker):
                profile.picker = plugin
        if profile.picker is None:
            picker = plugins.get("max-score-picker")
            if not isinstance(picker, Picker):
                picker = make("max-score-picker", "max-score-picker")
                assert isinstance(picker, Picker)
                plugins.setdefault("max-score-picker", picker)
            profile.picker = picker
        profiles[entry.name] = profile
    return profiles


def _handler(
    plugins: dict[str, Plugin], profiles: dict[str, Profile], source: str
) -> ProfileHandler:
    handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        raise _err(f"{source}: plugins", "more than one profile handler")
    if handlers:
        return handlers[0]
    if len(profiles) != 1:
        raise _err(f"{source}: plugins", "several profiles need a profile handler")
    handler = make("single-profile-handler", "single-profile-handler")
    assert isinstance(handler, ProfileHandler)
    plugins[handler.name] = handler
    return handler


def _attach(source: Plugin, extractor: Plugin) -> None:
    """Tell a data source which extractors the dataLayer section lists under it."""
    from pdserve.epp.plugins.datalayer import DataSource, Extractor

    if isinstance(source, DataSource) and isinstance(extractor, Extractor):
        source.attach(extractor)


def _top_level(cfg: Config, source: str) -> None:
    """The v0.9+ sections name plugins by pluginRef: each must exist and be of its kind."""
    doc, plugins = cfg.doc, cfg.plugins
    layer = doc.dataLayer or doc.data
    section = "dataLayer" if doc.dataLayer else "data"
    if layer is not None:
        for i, src in enumerate(layer.sources):
            at = f"{source}: {section}.sources[{i}]"
            source_plugin = _target(plugins, src.pluginRef, "DataSource", f"{at}.pluginRef")
            for j, ext in enumerate(src.extractors):
                at_ext = f"{at}.extractors[{j}].pluginRef"
                extractor = _target(plugins, ext.pluginRef, "Extractor", at_ext)
                _attach(source_plugin, extractor)
        if layer.discovery is not None:
            _target(
                plugins,
                layer.discovery.pluginRef,
                "Discovery",
                f"{source}: {section}.discovery.pluginRef",
            )
    parsers = list(doc.requestHandler.parsers) if doc.requestHandler else []
    for i, ref in enumerate(parsers):
        _target(
            plugins, ref.pluginRef, "Parser", f"{source}: requestHandler.parsers[{i}].pluginRef"
        )
    if doc.parser is not None:
        _target(plugins, doc.parser.pluginRef, "Parser", f"{source}: parser.pluginRef")
    fc = doc.flowControl
    if fc is not None:
        for i, band in enumerate(fc.priorityBands):
            at = f"{source}: flowControl.priorityBands[{i}]"
            if band.fairnessPolicyRef:
                _target(
                    plugins, band.fairnessPolicyRef, "FairnessPolicy", f"{at}.fairnessPolicyRef"
                )
            if band.orderingPolicyRef:
                _target(
                    plugins, band.orderingPolicyRef, "OrderingPolicy", f"{at}.orderingPolicyRef"
                )
        if fc.usageLimitPolicyPluginRef:
            cfg.usage_limit = _target(
                plugins,
                fc.usageLimitPolicyPluginRef,
                "UsageLimitPolicy",
                f"{source}: flowControl.usageLimitPolicyPluginRef",
            )
    cfg.detector = _detector(cfg, source)
    cfg.admitters = [p for p in plugins.values() if isinstance(p, kind("Admitter"))]
    if flow_control_on(doc):
        from pdserve.epp import flow_control

        try:
            cfg.flow = flow_control.settings(doc.flowControl, plugins)
        except ConfigError as err:
            raise _err(source, str(err)) from None
        if cfg.detector is None:  # upstream's default gate: the utilization detector
            cfg.detector = make("utilization-detector", "utilization-detector")


def _detector(cfg: Config, source: str) -> Any:
    doc = cfg.doc
    spec, at = doc.saturationDetector, "saturationDetector"
    if doc.flowControl is not None and doc.flowControl.saturationDetector is not None:
        spec, at = doc.flowControl.saturationDetector, "flowControl.saturationDetector"
    if spec is None:
        return None
    if spec.pluginRef:
        return _target(
            cfg.plugins, spec.pluginRef, "SaturationDetector", f"{source}: {at}.pluginRef"
        )
    thresholds = spec.model_dump(exclude={"pluginRef"}, exclude_none=True)
    try:
        return make("utilization-detector", "utilization-detector", thresholds)
    except ConfigError as err:
        raise _err(f"{source}: {at}", str(err).removeprefix("parameters.")) from None
