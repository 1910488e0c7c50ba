"""Profile handlers (which profiles run, which result is primary), the P/D deciders, and the
pre-request hooks that tell the decode sidecar where to prefill (or encode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, Field, field_validator

from pdserve.epp.framework import (
    ConfigError,
    Parameters,
    Plugin,
    PreRequest,
    ProfileHandler,
    ProfileRef,
    Ref,
    register,
)
from pdserve.epp.plugins.prefix import (
    PrefixCacheScorer,
    PrefixProducer,
    default_producer,
    estimated_tokens,
    held,
)
from pdserve.epp.types import Cycle, Endpoint, ProfileResult, Request, Result, StateKey
from pdserve.wire import DATA_PARALLEL_HEADER, ENCODER_HEADER, PREFILLER_HEADER

DECISION = StateKey[str]("pd.decision")  # "prefill-decode" | "decode-only"
REASON = StateKey[str]("pd.reason")  # why, in words, for the routing trace
# The endpoint an earlier stage chose (decode before prefill, prefill before decode), for the
# later profile's plugins to compare with (topology affinity): upstream's peer-endpoint.
PEER = StateKey[Endpoint]("disagg.peer-endpoint")


class Verdict(NamedTuple):
    """A P/D choice and its reason, as a person debugging routing reads it."""

    disaggregate: bool
    reason: str


def _threshold_verdict(uncached: float, threshold: float, unit: str, param: str) -> Verdict:
    if uncached >= threshold:
        return Verdict(
            True, f"disaggregated: {uncached:.0f} uncached {unit} >= {param} {threshold:g}"
        )
    return Verdict(False, f"decode-only: {uncached:.0f} uncached {unit} < {param} {threshold:g}")


def no_prefill_endpoint(cycle: Cycle, profile: str) -> None:
    """The decider chose P/D but `profile` left no endpoint: the reason keeps both, so the
    trace of a decode-only request still shows why it wanted a prefill."""
    wanted = cycle.get(REASON, "")
    cycle.put(
        REASON,
        f"decode-only: no endpoint passed profile {profile!r}"
        f" (wanted {wanted.removeprefix('disaggregated: ')})",
    )


@register("single-profile-handler")
class SingleProfileHandler(ProfileHandler):
    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        return [] if done else list(profiles[:1])

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        return Result(done, next(iter(done)))


class Decider(Plugin):
    """Whether a request whose decode endpoint is chosen should also run another stage."""

    def bind(self, plugins: dict[str, Plugin], profiles: Sequence[str]) -> None:
        """The default producer, whatever the profiles' scorers read: upstream's deciders
        take no producer name and read the unnamed match-info key (prefix_based_pd_decider.go
        in v0.10), which the approx-prefix-cache-producer writes."""
        self.producer: PrefixProducer = default_producer(plugins)

    def disaggregate(self, cycle: Cycle, req: Request, endpoint: Endpoint | None) -> Verdict:
        raise NotImplementedError


@register("prefix-based-pd-decider")
class PrefixBasedDecider(Decider):
    """P/D when the prompt's uncached tokens (prompt tokens - cached blocks x block tokens)
    reach nonCachedTokens; 0 disables P/D, as upstream."""

    class Params(Parameters):
        nonCachedTokens: int = Field(0, ge=0)
        promptTokens: int = Field(0, ge=0)

    def disaggregate(self, cycle: Cycle, req: Request, endpoint: Endpoint | None) -> Verdict:
        p = self.params
        assert isinstance(p, PrefixBasedDecider.Params)
        if p.nonCachedTokens == 0:
            return Verdict(False, "decode-only: nonCachedTokens 0 (P/D disabled)")
        tokens = estimated_tokens(req.prompt)
        if p.promptTokens and tokens < p.promptTokens:
            return Verdict(
                False, f"decode-only: {tokens} prompt tokens < promptTokens {p.promptTokens}"
            )
        if tokens < p.nonCachedTokens:
            return Verdict(
                False, f"decode-only: {tokens} prompt tokens < nonCachedTokens {p.nonCachedTokens}"
            )
        cached = 0
        if endpoint is not None:
            m = self.producer.match(cycle, req)
            cached = held(self.producer, m, endpoint) * m.block_tokens
        return _threshold_verdict(tokens - cached, p.nonCachedTokens, "tokens", "nonCachedTokens")


@register("always-disagg-pd-decider", "always-disagg-multimodal-decider")
class AlwaysDisaggDecider(Decider):
    def disaggregate(self, cycle: Cycle, req: Request, endpoint: Endpoint | None) -> Verdict:
        return Verdict(True, f"disaggregated: {self.type_name}")


class _Stages(BaseModel):
    model_config = Parameters.model_config
    decode: Annotated[str, ProfileRef()] = "decode"
    prefill: Annotated[str, ProfileRef()] = "prefill"
    encode: Annotated[str, ProfileRef()] = "encode"


class _Deciders(BaseModel):
    model_config = Parameters.model_config
    prefill: Annotated[str, Ref("Decider")] = ""
    encode: Annotated[str, Ref("Decider")] = ""


class DisaggParams(Parameters):
    stageOrder: Literal["decode-first", "prefill-first"] = "decode-first"
    profiles: _Stages = Field(default_factory=_Stages)
    deciders: _Deciders = Field(default_factory=_Deciders)
    # the deprecated flat form (one or the other, as upstream)
    decodeProfile: Annotated[str, ProfileRef()] = ""
    prefillProfile: Annotated[str, ProfileRef()] = ""
    encodeProfile: Annotated[str, ProfileRef()] = ""
    deciderPluginName: Annotated[str, Ref("Decider")] = ""
    prefillDeciderPluginName: Annotated[str, Ref("Decider")] = ""
    encodeDeciderPluginName: Annotated[str, Ref("Decider")] = ""

    @field_validator("stageOrder", mode="before")
    @classmethod
    def _order(cls, v: object) -> object:
        """Upstream accepts decode/decodeFirst/decode_first and the prefill forms alike."""
        flat = str(v).lower().replace("-", "").replace("_", "")
        return {
            "": "decode-first",
            "decode": "decode-first",
            "decodefirst": "decode-first",
            "prefill": "prefill-first",
            "prefillfirst": "prefill-first",
        }.get(flat, v)


@register("disagg-profile-handler")
class DisaggProfileHandler(ProfileHandler, PreRequest):
    """Decode first (or prefill first); a decider per extra stage; the prefill (and encode)
    endpoints go to the sidecar in headers. A stage whose profile finds no endpoint leaves
    the request on the decode endpoint."""

    Params = DisaggParams
    params: DisaggParams

    def setup(self) -> None:
        p = self.params
        flat = p.model_fields_set & {
            "decodeProfile",
            "prefillProfile",
            "encodeProfile",
            "deciderPluginName",
            "prefillDeciderPluginName",
            "encodeDeciderPluginName",
        }
        if flat and p.model_fields_set & {"profiles", "deciders"}:
            raise ConfigError(
                "parameters: use either profiles/deciders or the deprecated flat fields, not both"
            )
        self.decode = p.decodeProfile or p.profiles.decode
        self.prefill = p.prefillProfile or p.profiles.prefill
        self.encode = p.encodeProfile or p.profiles.encode
        self.prefill_first = p.stageOrder == "prefill-first"
        if self.prefill_first and (
            p.deciders.prefill or p.prefillDeciderPluginName or p.deciderPluginName
        ):
            raise ConfigError(
                "parameters.deciders.prefill: not supported with stageOrder prefill-first"
            )

    def bind(self, plugins: dict[str, Plugin], profiles: Sequence[str]) -> None:
        r = self.refs
        self.pd = (
            r.get("deciders.prefill")
            or r.get("prefillDeciderPluginName")
            or r.get("deciderPluginName")
        )
        self.enc = r.get("deciders.encode") or r.get("encodeDeciderPluginName")

    def _stage(
        self,
        cycle: Cycle,
        req: Request,
        decider: Plugin | None,
        endpoint: Endpoint | None,
        profile: str,
    ) -> bool:
        if not isinstance(decider, Decider):
            cycle.setdefault(REASON, f"decode-only: no decider for profile {profile!r}")
            return False
        verdict = decider.disaggregate(cycle, req, endpoint)
        if profile == self.prefill:
            cycle.put(REASON, verdict.reason)
        return verdict.disaggregate

    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        if self.prefill_first:
            return self._prefill_first(cycle, req, profiles, done)
        if self.decode not in done:
            return [self.decode] if self.decode in profiles else []
        chosen = done[self.decode].endpoint
        if chosen is None:
            return []
        for stage, decider in ((self.encode, self.enc), (self.prefill, self.pd)):
            if stage in profiles and stage not in done:
                if self._stage(cycle, req, decider, chosen, stage):
                    if stage == self.prefill:
                        cycle.put(PEER, chosen)
                    return [stage]
                done[stage] = ProfileResult(None, skipped=True)
        return []

    def _prefill_first(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        if self.decode in done:
            return []
        if self.prefill in profiles and self.prefill not in done:
            cycle.put(REASON, "disaggregated: stageOrder prefill-first")
            return [self.prefill]
        if self.encode in profiles and self.encode not in done:
            if self._stage(cycle, req, self.enc, None, self.encode):
                return [self.encode]
            done[self.encode] = ProfileResult(None, skipped=True)
        ran = done.get(self.prefill)
        if ran is not None and ran.endpoint is not None:
            cycle.put(PEER, ran.endpoint)
        return [self.decode] if self.decode in profiles else []

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        kept = {k: v for k, v in done.items() if not v.skipped}
        prefill = kept.get(self.prefill)
        pd = prefill is not None and prefill.endpoint is not None
        cycle.put(DECISION, "prefill-decode" if pd else "decode-only")
        if prefill is not None and prefill.endpoint is None:
            no_prefill_endpoint(cycle, self.prefill)
        decode = kept.get(self.decode)
        if decode is None or decode.endpoint is None:
            cycle.put(REASON, "no decode endpoint")
            kept.setdefault(self.decode, ProfileResult(None))
        return Result(kept, self.decode)

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        prefill = result.profiles.get(self.prefill)
        if prefill is not None and prefill.endpoint is not None:
            result.headers[PREFILLER_HEADER] = prefill.endpoint.name
        encode = result.profiles.get(self.encode)
        if encode is not None and encode.endpoints:
            result.headers[ENCODER_HEADER] = ",".join(e.name for e in encode.endpoints)


class PDParams(Parameters):
    threshold: int = Field(0, ge=0)  # v0.2-v0.4: characters; 0 = always P/D
    hashBlockSize: int = Field(64, ge=1)
    decodeProfile: Annotated[str, ProfileRef()] = "decode"
    prefillProfile: Annotated[str, ProfileRef()] = "prefill"
    prefixPluginName: Annotated[str, Ref("PrefixCacheScorer")] = ""
    prefixPluginType: str = ""
    deciderPluginName: Annotated[str, Ref("Decider")] = ""
    primaryPort: int = Field(0, ge=0, le=65535)
    prefixMatchInfoProducerName: Annotated[str, Ref("PrefixProducer")] = ""


@register("pd-profile-handler")
class PDProfileHandler(ProfileHandler):
    """The deprecated handler. Without a decider (v0.2-v0.4) prefill is skipped when the
    prompt's uncached characters, len - max(matched blocks - 1, 0) x hashBlockSize, are under
    `threshold` (0: always P/D); upstream's -1 is its model-name block. With
    deciderPluginName (v0.5-v0.8) the decider chooses."""

    Params = PDParams
    params: PDParams

    def bind(self, plugins: dict[str, Plugin], profiles: Sequence[str]) -> None:
        self.decider = self.refs.get("deciderPluginName")
        scorer = self.refs.get("prefixPluginName")
        if scorer is None:
            found = plugins.get("prefix-cache-scorer")
            scorer = found if isinstance(found, PrefixCacheScorer) else None
        producer = self.refs.get("prefixMatchInfoProducerName")
        if producer is None and isinstance(scorer, PrefixCacheScorer):
            producer = scorer.bound_producer(plugins)
        self.producer = producer if isinstance(producer, PrefixProducer) else None

    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        decode, prefill = self.params.decodeProfile, self.params.prefillProfile
        if not done:
            return [decode]
        if prefill in done or prefill not in profiles:
            return []
        chosen = done[decode].endpoint
        if chosen is None:
            return []
        verdict = self._verdict(cycle, req, chosen)
        cycle.put(REASON, verdict.reason)
        return [prefill] if verdict.disaggregate else []

    def _verdict(self, cycle: Cycle, req: Request, chosen: Endpoint) -> Verdict:
        if isinstance(self.decider, Decider):
            return self.decider.disaggregate(cycle, req, chosen)
        threshold = self.params.threshold
        if threshold == 0:
            return Verdict(True, "disaggregated: threshold 0 (always)")
        hit = 0
        if self.producer is not None:
            blocks = held(self.producer, self.producer.match(cycle, req), chosen)
            hit = max(blocks - 1, 0) * self.params.hashBlockSize
        uncached = max(len(req.prompt) - hit, 0)
        return _threshold_verdict(uncached, threshold, "characters", "threshold")

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        decode, prefill_name = self.params.decodeProfile, self.params.prefillProfile
        prefill = done.get(prefill_name)
        pd = prefill is not None and prefill.endpoint is not None
        cycle.put(DECISION, "prefill-decode" if pd else "decode-only")
        if prefill is not None and prefill.endpoint is None:
            no_prefill_endpoint(cycle, prefill_name)
        elif done[decode].endpoint is None:
            cycle.put(REASON, "no decode endpoint")
        return Result(done, decode)

    def finish(self, cycle: Cycle, req: Request, result: Result) -> None:
        if self.params.primaryPort:
            _to_primary_port(result, self.params.primaryPort)

    def inert(self) -> dict[str, str]:
        if self.params.prefixPluginType:
            return {
                "prefixPluginType": "upstream ignores it too; prefixPluginName names the scorer"
            }
        return {}


def _to_primary_port(result: Result, port: int) -> None:
    """Data parallel: the sidecar on `port` serves every rank; it learns the chosen rank's
    own address from the header."""
    primary = result.profiles[result.primary]
    if primary.endpoint is None:
        return
    result.headers[DATA_PARALLEL_HEADER] = primary.endpoint.name
    moved = [Endpoint(e.address, port, e.labels, e.metrics) for e in primary.endpoints]
    primary.endpoints, primary.endpoint = moved, moved[0]
    primary.fallbacks = []  # another address would get this rank's header


@register("data-parallel-profile-handler")
class DataParallelProfileHandler(SingleProfileHandler):
    """One profile; the chosen rank's ip:port goes in x-data-parallel-host-port and the
    request itself to primaryPort on the same address."""

    class Params(Parameters):
        primaryPort: int = Field(8000, ge=1, le=65535)

    params: Params

    def bind(self, plugins: dict[str, Plugin], profiles: Sequence[str]) -> None:
        if len(profiles) != 1:
            raise ConfigError("needs exactly one scheduling profile")

    def finish(self, cycle: Cycle, req: Request, result: Result) -> None:
        _to_primary_port(result, self.params.primaryPort)


@register("disagg-headers-handler", "prefill-header-handler")
class PrefillHeaderHandler(PreRequest):
    """Deprecated since v0.9 (the disagg handler sets the header itself)."""

    class Params(Parameters):
        prefillProfile: Annotated[str, ProfileRef()] = "prefill"

    params: Params

    def pre_request(self, cycle: Cycle, req: Request, result: Result) -> None:
        prefill = result.profiles.get(self.params.prefillProfile)
        if prefill is not None and prefill.endpoint is not None:
            result.headers[PREFILLER_HEADER] = prefill.endpoint.name


class HeaderProfileParams(Parameters):
    headerName: str = ""
    defaultProfile: str = ""


@register("header-profile-handler")
class HeaderProfileHandler(ProfileHandler):
    """One profile per request, named by a request header (EPP-Profile unless headerName),
    else defaultProfile ("decode"); a name no profile has routes nowhere. With one profile,
    that one. As upstream's (headerprofile/header_profile_handler.go, alpha)."""

    stability = "alpha"
    Params = HeaderProfileParams
    params: HeaderProfileParams

    def setup(self) -> None:
        self.header = self.params.headerName.strip().lower() or "epp-profile"
        self.default = self.params.defaultProfile.strip() or "decode"

    def pick_profiles(
        self, cycle: Cycle, req: Request, profiles: Sequence[str], done: dict[str, ProfileResult]
    ) -> list[str]:
        if done:
            return []
        if len(profiles) == 1:
            return list(profiles)
        asked = req.headers.get(self.header, "").strip()
        name = asked or self.default
        if name in profiles:
            return [name]
        cycle.state[REASON] = (
            f"no scheduling profile {asked!r} (header {self.header})"
            if asked
            else f"defaultProfile {name!r} is not a scheduling profile"
        )
        return []

    def results(self, cycle: Cycle, req: Request, done: dict[str, ProfileResult]) -> Result:
        if not done:  # nothing ran: no endpoint, the request is refused (503)
            return Result({self.default: ProfileResult(None)}, self.default)
        return Result(done, next(iter(done)))
