"""Profile handlers (which profiles run, which result is primary), P/D deciders, and the
pre-request hook that tells the decode sidecar where to prefill."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pdserve.epp.framework import ConfigError, Plugin, PreRequest, ProfileHandler, register
from pdserve.epp.plugins.prefix import HITS
from pdserve.epp.types import Cycle, ProfileResult, Request, Result
from pdserve.wire import PREFILLER_HEADER

DECISION = "pd.decision"  # cycle.state: "prefill-decode" | "decode-only"
REASON = "pd.reason"  # cycle.state: why, in words, for the routing trace


class Verdict(NamedTuple):
    """A P/D choice and its reason, as a person debugging routing reads it."""

    disaggregate: bool
    reason: str


def _threshold_verdict(uncached: float, threshold: float, unit: str, param: str) -> Verdict:
    if threshold == 0:
        return Verdict(True, f"disaggregated: {param} 0 (always)")
    if uncached >= threshold:
        return Verdict(
            True, f"disaggregated: {uncached:.0f} uncached {unit} >= {param} {threshold:g}"
        )
    return Verdict(False, f"decode-only: {uncached:.0f} uncached {unit} < {param} {threshold:g}")


@register("single-profile-handler")
class SingleProfileHandler(ProfileHandler):
    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        return [] if done else list(profiles[:1])

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        return Result(done, next(iter(done)))


class Decider(Plugin):
    """Whether a request whose decode pod is chosen should also be prefilled elsewhere."""

    def disaggregate(self, cycle: Cycle, req: Request, hit: float) -> Verdict:
        raise NotImplementedError


@register("prefix-based-pd-decider")
class PrefixBasedDecider(Decider):
    """P/D when the prompt's uncached part reaches `nonCachedTokens` (approximated as
    characters / 4 when only text is known)."""

    defaults = {"nonCachedTokens": 0}

    def disaggregate(self, cycle: Cycle, req: Request, hit: float) -> Verdict:
        uncached = (1 - hit) * len(req.prompt) / 4
        return _threshold_verdict(
            uncached, self.number("nonCachedTokens"), "tokens", "nonCachedTokens"
        )


@register("always-disagg-pd-decider")
class AlwaysDisaggDecider(Decider):
    def disaggregate(self, cycle: Cycle, req: Request, hit: float) -> Verdict:
        return Verdict(True, "disaggregated: always-disagg-pd-decider")


@register("pd-profile-handler", "disagg-profile-handler")
class PDProfileHandler(ProfileHandler):
    """Decode first; then prefill unless the uncached part of the prompt, (1 - hit) x
    len(prompt), is under `threshold` characters (0: always). A prefill profile that finds no
    endpoint degrades to decode-only."""

    defaults = {
        "threshold": 0,
        "hashBlockSize": 64,
        "decodeProfile": "decode",
        "prefillProfile": "prefill",
        "prefixPluginName": "prefix-cache-scorer",
        "deciderPluginName": "",
        "decider": "",
    }

    def setup(self) -> None:
        self.threshold = self.number("threshold")
        self.decider: Decider | None = None

    def bind(self, plugins: dict[str, Plugin], profiles: Sequence[str]) -> None:
        """Resolve references at load time: a wrong name would otherwise fail every request."""
        for key in ("decodeProfile", "prefillProfile"):
            if self.params[key] not in profiles:
                raise ConfigError(
                    f"parameter {key}: no scheduling profile named {self.params[key]!r}"
                )
        name = self.params["deciderPluginName"] or self.params["decider"]
        if name:
            decider = plugins.get(name)
            if not isinstance(decider, Decider):
                raise ConfigError(f"parameter deciderPluginName: {name!r} is not a decider plugin")
            self.decider = decider

    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        decode, prefill = self.params["decodeProfile"], self.params["prefillProfile"]
        if not done:
            return [decode]
        if prefill in done or prefill not in profiles:
            return []
        chosen = done[decode].endpoint
        if chosen is None:
            return []
        hit = cycle.state.get(HITS, {}).get(chosen.name, 0.0)
        if self.decider is not None:
            verdict = self.decider.disaggregate(cycle, req, hit)
        else:
            uncached = (1 - hit) * len(req.prompt)
            verdict = _threshold_verdict(uncached, self.threshold, "characters", "threshold")
        cycle.state[REASON] = verdict.reason
        return [prefill] if verdict.disaggregate else []

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        prefill = done.get(self.params["prefillProfile"])
        pd = prefill is not None and prefill.endpoint is not None
        cycle.state[DECISION] = "prefill-decode" if pd else "decode-only"
        if prefill is not None and prefill.endpoint is None:
            wanted = cycle.state.get(REASON, "")
            cycle.state[REASON] = (
                f"decode-only: no endpoint passed profile {self.params['prefillProfile']!r}"
                f" (wanted {wanted.removeprefix('disaggregated: ')})"
            )
        elif done[self.params["decodeProfile"]].endpoint is None:
            cycle.state[REASON] = "no decode endpoint"
        return Result(done, self.params["decodeProfile"])


@register("prefill-header-handler", "disagg-headers-handler")
class PrefillHeaderHandler(PreRequest):
    defaults = {"prefillProfile": "prefill"}

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        prefill = result.profiles.get(self.params["prefillProfile"])
        if prefill is not None and prefill.endpoint is not None:
            result.headers[PREFILLER_HEADER] = prefill.endpoint.name
