"""One behaviour test per plugin family that lacked one, against the numbers llm-d-router
v0.10.0's own code gives for the same inputs: the metric scorers, the role, label and
utilization filters, the saturation detectors (as detectors and as filters), the pickers'
distributions, and the v0.10 families added alongside (utilization-filter,
context-length-aware, header-profile-handler, session-affinity-filter). Each expectation names
the upstream file (under pkg/epp/framework/plugins/) and function it was worked out from.
pdserve reads the engine's scraped running count where upstream counts its own in-flight
requests: that changes where the number comes from, not the formula."""

from __future__ import annotations

import base64
import random
from collections import Counter

import pytest

from pdserve.epp.config import load
from pdserve.epp.framework import ConfigError, Filter, Picker, Scorer, make
from pdserve.epp.plugins.flowcontrol import Admitter, SaturationDetector
from pdserve.epp.scheduler import Scheduler
from pdserve.epp.types import Cycle, Endpoint, Metrics, Request
from pdserve.wire import ROLE_LABEL, SESSION_HEADER


def ep(
    port: int,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    labels: dict[str, str] | None = None,
    updated: float | None = 0.0,
) -> Endpoint:
    return Endpoint("10.0.0.1", port, labels or {}, Metrics(waiting, running, kv, updated=updated))


def cycle(seed: int = 0, now: float = 0.0) -> Cycle:
    return Cycle(now=now, rng=random.Random(seed))


def scores(type_name: str, eps: list[Endpoint], params: dict | None = None) -> list[float]:
    """The scorer's scores in endpoint order, rounded where upstream's float64 is exact."""
    plugin = make(type_name, type_name, params)
    assert isinstance(plugin, Scorer)
    out = plugin.score(cycle(), Request("r", "m", "p"), eps)
    return [round(out[e.name], 9) for e in eps]


def kept(type_name: str, eps: list[Endpoint], params: dict | None = None, now: float = 0.0) -> list:
    plugin = make(type_name, type_name, params)
    assert isinstance(plugin, Filter)
    return [e.port for e in plugin.filter(cycle(now=now), Request("r", "m", "p"), eps)]


# scheduling/scorer/queuedepth/queue.go QueueScorer.Score: (max - q) / (max - min), all equal 1.
@pytest.mark.parametrize(
    ("queues", "expected"), [([0, 5, 10], [1.0, 0.5, 0.0]), ([3, 3], [1.0, 1.0]), ([7], [1.0])]
)
def test_queue_scorer(queues: list[int], expected: list[float]) -> None:
    eps = [ep(i, waiting=q) for i, q in enumerate(queues)]
    assert scores("queue-scorer", eps) == expected


# scheduling/scorer/runningrequests/runningrequest.go RunningRequestsSizeScorer.Score: the
# same min-max over RunningRequestsSize.
def test_running_requests_size_scorer() -> None:
    eps = [ep(i, running=r) for i, r in enumerate([2, 4, 10])]
    assert scores("running-requests-size-scorer", eps) == [1.0, 0.75, 0.0]
    assert scores("running-requests-size-scorer", [ep(1, running=9), ep(2, running=9)]) == [1, 1]


# scheduling/scorer/kvcacheutilization/kvcache_utilization.go Score: 1 - KVCacheUsagePercent
# (a fraction in 0..1, as vLLM's kv_cache_usage_perc).
def test_kv_cache_utilization_scorer() -> None:
    eps = [ep(i, kv=kv) for i, kv in enumerate([0.0, 0.25, 1.0])]
    assert scores("kv-cache-utilization-scorer", eps) == [1.0, 0.75, 0.0]


# scheduling/scorer/loadaware/load_aware.go LoadAware.Score: empty queue 0.5, else
# 0.5 x (1 - min(q, threshold) / threshold); NewLoadAware: threshold <= 0 means the default
# 128 (QueueThresholdDefault), loaded, not refused.
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [0.5, 0.25, 0.0]),  # q 0, 64, 200 against 128
        ({"threshold": 0}, [0.5, 0.25, 0.0]),
        ({"threshold": -3}, [0.5, 0.25, 0.0]),
        ({"threshold": 256}, [0.5, 0.375, 0.109375]),  # 0.5 x (1 - 200/256)
    ],
)
def test_load_aware_scorer(params: dict, expected: list[float]) -> None:
    eps = [ep(i, waiting=q) for i, q in enumerate([0, 64, 200])]
    assert scores("load-aware-scorer", eps, params) == expected


def test_load_aware_threshold_zero_loads_and_check_says_it_is_the_default() -> None:
    cfg = load(
        "plugins: [{type: load-aware-scorer, parameters: {threshold: 0}}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: load-aware-scorer}]}]"
    )
    assert cfg.plugins["load-aware-scorer"].inert() == {
        "threshold": "not positive: the default 128 is used"
    }


# scheduling/scorer/activerequest/active_request.go ActiveRequest.Score: count <= idleThreshold
# scores 1, else (maxCount - count) / maxCount x maxBusyScore.
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [1.0, 0.75, 0.5, 0.0]),
        ({"idleThreshold": 2, "maxBusyScore": 0.5}, [1.0, 1.0, 0.25, 0.0]),
    ],
)
def test_active_request_scorer(params: dict, expected: list[float]) -> None:
    eps = [ep(i, running=n) for i, n in enumerate([0, 2, 4, 8])]
    assert scores("active-request-scorer", eps, params) == expected
    assert scores("active-request-scorer", [ep(1), ep(2)], params) == [1.0, 1.0]  # all idle


# scheduling/scorer/loraaffinity/lora_affinity.go Score: active 1, room for one more adapter
# (active + waiting < MaxActiveModels) 0.8, waiting 0.6, else 0: room is tested before waiting.
def test_lora_affinity_scorer() -> None:
    active, room, waiting, full = ep(1), ep(2), ep(3), ep(4)
    active.metrics.loras_running = frozenset({"m", "x"})
    active.metrics.max_loras = 2
    room.metrics.loras_running, room.metrics.max_loras = frozenset({"x"}), 4
    waiting.metrics.loras_waiting, waiting.metrics.max_loras = frozenset({"m", "x"}), 2
    full.metrics.loras_running, full.metrics.max_loras = frozenset({"x", "y"}), 2
    # "room" is also where the adapter waits when there is room: 0.8, not 0.6
    both = ep(5)
    both.metrics.loras_waiting, both.metrics.max_loras = frozenset({"m"}), 3
    eps = [active, room, waiting, full, both]
    assert scores("lora-affinity-scorer", eps) == [1.0, 0.8, 0.6, 0.0, 0.8]


# scheduling/scorer/sessionaffinity/encoded_endpoint_header.go score and
# scheduling/util/sessionaffinity/header.go DecodePodName: the x-session-token header
# (DefaultHeader) is base64 of the endpoint's id; that endpoint 1, every other 0; a token that
# does not decode, or none, gives 0 everywhere. pdserve's id is the ip:port it routes to.
@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (base64.b64encode(b"10.0.0.1:2").decode(), [0.0, 1.0, 0.0]),
        ("%%%not-base64", [0.0, 0.0, 0.0]),
        ("", [0.0, 0.0, 0.0]),
    ],
)
def test_session_affinity_scorer(token: str, expected: list[float]) -> None:
    plugin = make("session-affinity-scorer", "s")
    assert isinstance(plugin, Scorer)
    eps = [ep(1), ep(2), ep(3)]
    headers = {SESSION_HEADER: token} if token else {}
    out = plugin.score(cycle(), Request("r", "m", "p", headers), eps)
    assert [out[e.name] for e in eps] == expected


# scheduling/filter/bylabel/selector.go Selector.Filter: metav1.LabelSelectorAsSelector
# semantics: every matchLabels pair and every expression; NotIn and DoesNotExist hold where
# the key is absent; an empty selector keeps everything.
@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, [1, 2, 3, 4]),
        ({"matchLabels": {"tier": "gpu"}}, [1, 2]),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, [1, 3]),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, [2, 4]),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, [1, 2, 3]),
        ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, [4]),
        (
            {
                "matchLabels": {"tier": "gpu"},
                "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}],
            },
            [1],
        ),
    ],
)
def test_label_selector_filter(selector: dict, expected: list[int]) -> None:
    eps = [
        ep(1, labels={"tier": "gpu", "zone": "a"}),
        ep(2, labels={"tier": "gpu", "zone": "b"}),
        ep(3, labels={"tier": "cpu", "zone": "a"}),
        ep(4, labels={"tier": "cpu"}),
    ]
    assert kept("label-selector-filter", eps, selector) == expected


# flowcontrol/saturationdetector/utilization/detector.go Detector.Saturation: mean of
# max(queue / queueDepthThreshold, kv / kvCacheUtilThreshold), stale (> 200ms) counts 1, no
# endpoint 1; Detector.Filter: fresh and queue < q x (1 + headroom) and kv < kv x (1 +
# headroom), all of them back when none passes.
def test_utilization_detector_saturation_and_filter() -> None:
    det = make("utilization-detector", "u", {"headroom": 0.2})
    assert isinstance(det, SaturationDetector)
    # 5 x 1.2 = 6 and 0.8 x 1.2 = 0.96 (both just below: float64 products as upstream's)
    eps = [
        ep(1, waiting=5),  # 5 < 6: kept
        ep(2, waiting=6),  # not < 6
        ep(3, kv=0.95),  # kept
        ep(4, kv=0.97),  # not < 0.96
        ep(5, updated=-1.0),  # 1.0 s old at now 0.0 > 200ms: stale
    ]
    assert kept("utilization-detector", eps, {"headroom": 0.2}) == [1, 3]
    assert kept("utilization-detector", eps[1:2] + eps[3:], {"headroom": 0.2}) == [2, 4, 5]
    # (max(1, 0) + max(1.2, 0) + max(0, 1.1875) + max(0, 1.2125) + 1) / 5
    assert det.saturation(eps, 0.0) == pytest.approx((1 + 1.2 + 1.1875 + 1.2125 + 1) / 5)
    assert det.saturation([], 0.0) == 1.0


# flowcontrol/saturationdetector/concurrency/detector.go detector.Saturation (requests mode):
# sum of in-flight requests / (endpoints x maxConcurrency), no endpoint 1; detector.Filter:
# requests < int64(maxConcurrency x (1 + headroom)), and it may leave none; config.go
# validateConfig refuses a mode other than requests, tokens, hybrid.
def test_concurrency_detector_saturation_filter_and_modes() -> None:
    det = make("concurrency-detector", "c", {"maxConcurrency": 10, "headroom": 0.25})
    assert isinstance(det, SaturationDetector)
    eps = [ep(1, running=8, waiting=3), ep(2, running=12), ep(3, running=5)]  # 11, 12, 5
    assert det.saturation(eps, 0.0) == pytest.approx(28 / 30)
    assert det.saturation([], 0.0) == 1.0
    # int(10 x 1.25) = 12: 11 and 5 pass, 12 does not
    assert kept("concurrency-detector", eps, {"maxConcurrency": 10, "headroom": 0.25}) == [1, 3]
    assert kept("concurrency-detector", eps[1:2], {"maxConcurrency": 10}) == []
    for mode in ("requests", "tokens", "hybrid"):
        make("concurrency-detector", "c", {"concurrencyMode": mode})
    with pytest.raises(ConfigError, match="concurrencyMode"):
        make("concurrency-detector", "c", {"concurrencyMode": "bytes"})


def test_a_detector_filters_in_a_profile() -> None:
    """Upstream's detectors are scheduling filters too; referenced in a profile, one filters."""
    cfg = load(
        "plugins: [{type: utilization-detector}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: utilization-detector},"
        " {pluginRef: max-score-picker}]}]"
    )
    busy, idle = ep(1, waiting=9), ep(2)
    for seed in range(8):
        result = Scheduler(cfg).schedule(cycle(seed), Request("r", "m", "p"), [busy, idle])
        assert result.endpoint is idle


def picks(type_name: str, scored: list[tuple[Endpoint, float]], n: int, **params: int) -> Counter:
    """How often each set of picks (ports, in pick order) came out of n picks."""
    plugin = make(type_name, type_name, params)
    assert isinstance(plugin, Picker)
    cy = cycle(12)
    return Counter(tuple(e.port for e in plugin.pick_many(cy, list(scored))) for _ in range(n))


# scheduling/picker/weightedrandom/picker.go Pick: A-Res, key u^(1/score), the largest keys
# win: the first pick is i with chance s_i / sum; with two picks out of scores 3, 2, 1 the
# pair {3, 2} comes out with chance 3/6 x 2/3 + 2/6 x 3/4 = 7/12 (and {3, 1} 1/4, {2, 1} 1/6).
def test_weighted_random_picker_distribution() -> None:
    a, b, c = ep(1), ep(2), ep(3)
    n = 6000
    one = picks("weighted-random-picker", [(a, 3.0), (b, 2.0), (c, 1.0)], n)
    assert [one[(p,)] / n for p in (1, 2, 3)] == pytest.approx([1 / 2, 1 / 3, 1 / 6], abs=0.025)
    two = picks("weighted-random-picker", [(a, 3.0), (b, 2.0), (c, 1.0)], n, maxNumOfEndpoints=2)
    pairs = Counter[frozenset[int]]()
    for order, k in two.items():
        pairs[frozenset(order)] += k
    got = [pairs[frozenset(s)] / n for s in ({1, 2}, {1, 3}, {2, 3})]
    assert got == pytest.approx([7 / 12, 1 / 4, 1 / 6], abs=0.025)
    # a zero score has key 0: never first while a positive score is there
    assert picks("weighted-random-picker", [(a, 0.0), (b, 0.5)], 500) == Counter({(2,): 500})
    # all zero: the random picker's uniform choice
    flat = picks("weighted-random-picker", [(a, 0.0), (b, 0.0)], 4000)
    assert flat[(1,)] / 4000 == pytest.approx(0.5, abs=0.03)


# scheduling/picker/maxscore/picker.go Pick: shuffle, then a stable sort by score: the top
# score always, a tie between the top two split evenly; picker/common.go: maxNumOfEndpoints
# defaults to 1.
def test_max_score_picker_ties_split_evenly() -> None:
    a, b, c = ep(1), ep(2), ep(3)
    got = picks("max-score-picker", [(a, 0.7), (b, 0.7), (c, 0.2)], 4000)
    assert set(got) == {(1,), (2,)}
    assert got[(1,)] / 4000 == pytest.approx(0.5, abs=0.03)
    assert picks("max-score-picker", [(a, 0.1), (b, 0.9), (c, 0.5)], 50) == Counter({(2,): 50})


# scheduling/picker/random/picker.go Pick: a shuffle, so each of n candidates 1/n.
def test_random_picker_uniform() -> None:
    eps = [ep(i) for i in range(1, 5)]
    got = picks("random-picker", [(e, float(i)) for i, e in enumerate(eps)], 8000)
    assert [got[(p,)] / 8000 for p in range(1, 5)] == pytest.approx([0.25] * 4, abs=0.025)


# scheduling/filter/bylabel/roles.go NewDecodeRole, NewEncodeRole (v0.7 to v0.10): decode
# keeps decode, prefill-decode, both, encode-prefill-decode and unlabelled pods; encode keeps
# encode, encode-prefill, encode-prefill-decode. NewPrefillRole also keeps both and the
# combined roles there; pdserve keeps prefill pods only (see filters.PrefillFilter).
def test_role_filters() -> None:
    roles = ["decode", "prefill", "both", "prefill-decode", "encode", "encode-prefill"]
    roles += ["encode-prefill-decode", None]
    eps = [ep(i, labels={ROLE_LABEL: r} if r else {}) for i, r in enumerate(roles)]
    assert kept("decode-filter", eps) == [0, 2, 3, 6, 7]
    assert kept("encode-filter", eps) == [4, 5, 6]
    assert kept("prefill-filter", eps) == [1]


# scheduling/filter/bylabel/filter.go ByLabel.Filter: the label's value among validValues, or
# the label absent where allowsNoLabel.
def test_by_label_filter() -> None:
    eps = [ep(1, labels={"gpu": "h100"}), ep(2, labels={"gpu": "a10"}), ep(3)]
    assert kept("by-label", eps, {"label": "gpu", "validValues": ["h100"]}) == [1]
    assert kept(
        "by-label", eps, {"label": "gpu", "validValues": ["a10"], "allowsNoLabel": True}
    ) == [
        2,
        3,
    ]
    # the factory refuses a filter that could keep nothing
    with pytest.raises(ConfigError, match="validValues must be non-empty or allowsNoLabel"):
        make("by-label", "b", {"label": "gpu"})


# scheduling/filter/utilization/filter.go UtilizationFilter.Filter (alpha in cmd/epp/runner/
# runner.go): every condition's
# metric <= maxValue; none left is [] unless fallbackOnEmpty; NewUtilizationFilter refuses no
# condition, an unknown metric, a negative maxValue and a kv-cache-utilization one over 1.
def test_utilization_filter() -> None:
    eps = [ep(1, waiting=2, kv=0.5), ep(2, waiting=3, kv=0.5), ep(3, waiting=0, kv=0.9)]
    both = [
        {"metric": "waiting-queue", "maxValue": 2},
        {"metric": "kv-cache-utilization", "maxValue": 0.8},
    ]
    assert kept("utilization-filter", eps, {"conditions": both}) == [1]  # 2 <= 2 kept
    none = [{"metric": "running-requests", "maxValue": 0}]
    busy = [ep(4, running=1), ep(5, running=2)]
    assert kept("utilization-filter", busy, {"conditions": none}) == []
    assert kept("utilization-filter", busy, {"conditions": none, "fallbackOnEmpty": True}) == [4, 5]
    for bad in (
        {"conditions": []},
        {"conditions": [{"metric": "gpu", "maxValue": 1}]},
        {"conditions": [{"metric": "waiting-queue", "maxValue": -1}]},
        {"conditions": [{"metric": "kv-cache-utilization", "maxValue": 80}]},
        {"conditions": [{"metric": "waiting-queue"}]},
    ):
        with pytest.raises(ConfigError):
            make("utilization-filter", "u", bad)


def test_utilization_filter_is_alpha() -> None:
    text = (
        "plugins: [{type: utilization-filter, parameters: {conditions: "
        "[{metric: waiting-queue, maxValue: 4}]}}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: utilization-filter}]}]"
    )
    with pytest.raises(ConfigError, match="an Alpha plugin"):
        load(text)
    assert "utilization-filter" in load(text, allow_experimental=True).plugins


# scheduling/scorer/contextlengthaware/context_length_aware.go Score and calculateRangeScore:
# inside min-max, 0.3 + 0.7 x (0.7 / (1 + width / 10000) + 0.3 x (max - tokens) / width), a
# zero-width range 1; outside, 0.3 / (1 + distance / 1000); unlabelled 0.5; a label that does
# not parse (or min > max, parseContextRange) 0. Filter (enableFiltering): pods whose range
# holds the length, and unlabelled ones; pass-through without it. 4000 bytes = 1000 tokens.
def test_context_length_aware() -> None:
    label = "llm-d.ai/context-length-range"
    ranges = ["0-8000", "8001-32000", "1000-1000", "1000-4000", None, "abc", "9-3"]
    eps = [ep(i, labels={label: r} if r else {}) for i, r in enumerate(ranges)]
    plugin = make("context-length-aware", "c")
    assert isinstance(plugin, Scorer)
    out = plugin.score(cycle(), Request("r", "m", "x" * 4000), eps)
    assert [out[e.name] for e in eps] == pytest.approx(
        [
            0.3 + 0.7 * (0.7 / 1.8 + 0.3 * 7000 / 8000),  # 0.75597...
            0.3 / (1 + 7001 / 1000),  # 0.03750...
            1.0,
            0.3 + 0.7 * (0.7 / 1.3 + 0.3 * 3000 / 3000),  # 0.88692...
            0.5,
            0.0,
            0.0,
        ]
    )
    on = {"enableFiltering": True}
    assert kept("context-length-aware", eps) == list(range(7))
    filt = make("context-length-aware", "c", on)
    assert isinstance(filt, Filter)
    kept_ports = [e.port for e in filt.filter(cycle(), Request("r", "m", "x" * 4000), eps)]
    assert kept_ports == [0, 2, 3, 4]
    with pytest.raises(ConfigError):
        make("context-length-aware", "c", {"label": ""})


HEADER_PROFILES = """\
plugins:
- {type: header-profile-handler, parameters: {headerName: X-Profile}}
- {type: label-selector-filter, name: small, parameters: {matchLabels: {size: small}}}
- {type: label-selector-filter, name: big, parameters: {matchLabels: {size: big}}}
schedulingProfiles:
- {name: decode, plugins: [{pluginRef: small}]}
- {name: large, plugins: [{pluginRef: big}]}
"""


# scheduling/profilehandler/headerprofile/header_profile_handler.go Pick and ProcessResults
# (alpha): the profile the header names (headerName lowercased, EPP-Profile by default), else
# defaultProfile ("decode"); a name no profile has runs nothing and the request fails; with
# one profile, that one whatever the header says.
def test_header_profile_handler() -> None:
    small, big = ep(1, labels={"size": "small"}), ep(2, labels={"size": "big"})
    sched = Scheduler(load(HEADER_PROFILES, allow_experimental=True))

    def routed(headers: dict[str, str]) -> int | None:
        result = sched.schedule(cycle(), Request("r", "m", "p", headers), [small, big])
        return result.endpoint.port if result.endpoint else None

    assert routed({"x-profile": "large"}) == 2
    assert routed({"x-profile": " decode "}) == 1
    assert routed({}) == 1  # defaultProfile decode
    assert routed({"x-profile": "nope"}) is None
    assert routed({"epp-profile": "large"}) == 1  # not the configured header
    one = HEADER_PROFILES.replace("- {name: large, plugins: [{pluginRef: big}]}\n", "")
    only = Scheduler(load(one, allow_experimental=True))
    result = only.schedule(cycle(), Request("r", "m", "p", {"x-profile": "large"}), [small, big])
    assert result.endpoint is small
    other = HEADER_PROFILES.replace("headerName: X-Profile", "defaultProfile: large")
    result = Scheduler(load(other, allow_experimental=True)).schedule(
        cycle(), Request("r", "m", "p", {}), [small, big]
    )
    assert result.endpoint is big


# scheduling/filter/sessionaffinity/encoded_endpoint_header.go filter (alpha): the endpoint
# the decoded token names, alone, when it is among the candidates; every candidate otherwise
# (no token, one that does not decode, or one naming a pod not here).
@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (base64.b64encode(b"10.0.0.1:2").decode(), [2]),
        (base64.b64encode(b"10.0.0.9:2").decode(), [1, 2, 3]),
        ("%%%not-base64", [1, 2, 3]),
        ("", [1, 2, 3]),
    ],
)
def test_session_affinity_filter(token: str, expected: list[int]) -> None:
    plugin = make("session-affinity-filter", "s")
    assert isinstance(plugin, Filter)
    headers = {SESSION_HEADER: token} if token else {}
    out = plugin.filter(cycle(), Request("r", "m", "p", headers), [ep(1), ep(2), ep(3)])
    assert [e.port for e in out] == expected


# requestcontrol/admitter/probabilisticadmitter/plugin.go Admit: a sheddable request is
# refused when rand < min(saturation^power x k, 1), with upstream's message.
def test_probabilistic_admitter_message() -> None:
    adm = make("probabilistic-admitter", "p")
    assert isinstance(adm, Admitter)
    eps = [ep(1, waiting=5), ep(2, kv=0.4)]  # (1 + 0.5) / 2 = 0.75: 0.75^5 x 300 > 1
    assert adm.admit(cycle(), eps) == "probabilistic-admitter: rejected, saturation=0.750 prob=1.00"


# scheduling/scorer/activerequest/active_request.go NewActiveRequest: a negative idleThreshold
# is 0 and a maxBusyScore outside [0, 1] is the default 1.0; both load (and --check says so).
def test_active_request_out_of_range_parameters_load_as_upstreams_defaults() -> None:
    eps = [ep(i, running=n) for i, n in enumerate([0, 2, 4, 8])]
    odd = {"idleThreshold": -4, "maxBusyScore": 1.5}
    assert scores("active-request-scorer", eps, odd) == [1.0, 0.75, 0.5, 0.0]
    assert set(make("active-request-scorer", "a", odd).inert()) == {"idleThreshold", "maxBusyScore"}


# scheduling/picker/maxscore/picker.go NewMaxScorePicker (and the random and weighted ones):
# maxNumOfEndpoints <= 0 loads and falls back to 1 (picker/common.go DefaultMaxNumOfEndpoints).
@pytest.mark.parametrize("kind", ["max-score-picker", "random-picker", "weighted-random-picker"])
def test_pickers_take_a_non_positive_count_as_one(kind: str) -> None:
    a, b = ep(1), ep(2)
    for n in (0, -2):
        got = picks(kind, [(a, 0.9), (b, 0.1)], 20, maxNumOfEndpoints=n)
        assert all(len(order) == 1 for order in got)


# scheduling/scorer/prefix/plugin.go New: matchLengthScaleTokens must be positive only when
# matchLengthWeight > 0 uses it; a weight outside [0, 1] is refused.
def test_prefix_scorer_scale_is_checked_only_when_used() -> None:
    make("prefix-cache-scorer", "p", {"matchLengthScaleTokens": 0})
    with pytest.raises(ConfigError, match="matchLengthScaleTokens must be > 0"):
        make("prefix-cache-scorer", "p", {"matchLengthWeight": 0.5, "matchLengthScaleTokens": 0})
    with pytest.raises(ConfigError, match="matchLengthWeight"):
        make("prefix-cache-scorer", "p", {"matchLengthWeight": 1.5})
