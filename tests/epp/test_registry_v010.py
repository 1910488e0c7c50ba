"""Plugin types of llm-d-router v0.10's registry added after the first v0.10 pass, each
against the numbers upstream's source gives for the same inputs (the comments name the
upstream file and function), plus the completion hook that feeds the in-flight counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from pdserve import wire
from pdserve.epp.config import load
from pdserve.epp.datastore import Datastore, StaticSource, parse_metrics
from pdserve.epp.director import Director
from pdserve.epp.extproc import FULL_DUPLEX, ExtProc
from pdserve.epp.framework import ConfigError, make
from pdserve.epp.metrics import EppMetrics
from pdserve.epp.plugins.datalayer import CoreMetricsExtractor, DCGMDataSource, MetricSpec
from pdserve.epp.plugins.filters import PrefixCacheAffinityFilter
from pdserve.epp.plugins.inflight import STALE_AFTER, InFlightLoadProducer, TokenLoadScorer
from pdserve.epp.plugins.prefix import ApproxPrefixProducer
from pdserve.epp.request import parse
from pdserve.epp.scheduler import Scheduler
from pdserve.epp.types import Cycle, Endpoint, Metrics, ProfileResult, Request, Result

A = Endpoint("10.0.0.1", 8000, {}, Metrics(updated=0.0))
B = Endpoint("10.0.0.2", 8000, {}, Metrics(updated=0.0))


def req(prompt: str, rid: str = "r1", max_tokens: int | None = None) -> Request:
    return Request(rid, "m", prompt, {}, max_output_tokens=max_tokens)


def routed(*picks: tuple[str, Endpoint]) -> Result:
    profiles = {name: ProfileResult(e) for name, e in picks}
    return Result(profiles, primary=picks[-1][0])


def producer(**params: object) -> InFlightLoadProducer:
    p = make("inflight-load-producer", "ifl", dict(params))
    assert isinstance(p, InFlightLoadProducer)
    p.bind({}, ())
    return p


# --- inflight-load-producer (requestcontrol/dataproducer/inflightload/producer.go) ---


def test_in_flight_counts_rise_at_dispatch_and_fall_with_the_answer() -> None:
    """400 bytes are 100 estimated tokens. Without output estimates the tokens go at the
    first chunk (ResponseBody, StartOfStream) and the request at the end (EndOfStream)."""
    p = producer()
    p.pre_request(Cycle(now=0.0), req("x" * 400), routed(("d", A)))
    assert p.in_flight(A.name) == (1, 100)
    p.response("r1", "watched", 1.0)
    p.response("r1", "started", 1.0)
    assert p.in_flight(A.name) == (1, 0)
    p.response("r1", "complete", 2.0)
    assert p.in_flight(A.name) == (0, 0)
    p.response("r1", "complete", 2.0)  # released once only: counts never go below 0
    assert p.in_flight(A.name) == (0, 0)


def test_prefill_share_goes_whole_at_the_first_chunk_decode_keeps_its_request() -> None:
    """P/D: at StartOfStream the "prefill" profile's entry is released (release), the other
    profiles' tokens only (releaseTokensEarly)."""
    p = producer()
    p.pre_request(Cycle(now=0.0), req("x" * 400), routed(("prefill", B), ("decode", A)))
    assert (p.in_flight(A.name), p.in_flight(B.name)) == ((1, 100), (1, 100))
    p.response("r1", "started", 0.5)
    assert (p.in_flight(A.name), p.in_flight(B.name)) == ((1, 0), (0, 0))


def test_output_estimate_is_capped_by_the_client_and_the_operator() -> None:
    """token_estimator.go EstimateOutput: min(round(100 x 1.5), max_tokens 120) = 120; with
    maxEstimatedOutputTokens 50, 50. With output estimates the decode tokens stay until the
    end; the prefill share still goes at the first chunk."""
    p = producer(addEstimatedOutputTokens=True)
    p.pre_request(Cycle(now=0.0), req("x" * 400, max_tokens=120), routed(("decode", A)))
    assert p.in_flight(A.name) == (1, 220)
    p.response("r1", "started", 0.1)
    assert p.in_flight(A.name) == (1, 220)
    capped = producer(addEstimatedOutputTokens=True, maxEstimatedOutputTokens=50)
    assert capped.output_estimate(100, None) == 50
    # Go's math.Round takes 3 x 1.5 = 4.5 away from zero, to 5 (Python's round gives 4).
    assert p.output_estimate(3, None) == 5
    assert producer(addEstimatedOutputTokens=True, outputRatio=0.0).output_estimate(9, None) == 0


def test_uncached_tokens_count_whole_blocks_and_the_tail_past_the_index() -> None:
    """uncachedInputTokens: (total - matched) x block + max(input - total x block, 0). 1000
    bytes are 250 tokens, 4 blocks of 64 (the last partial): a cold endpoint owes 256; one
    holding the first 2 blocks (a 512-byte prompt sent there) owes 128."""
    cfg = load(
        "plugins:\n"
        "- {type: approx-prefix-cache-producer, parameters: {autoTune: false}}\n"
        "- type: inflight-load-producer\n"
        "schedulingProfiles: [{name: d}]\n"
    )
    approx, p = cfg.plugins["approx-prefix-cache-producer"], cfg.plugins["inflight-load-producer"]
    assert isinstance(approx, ApproxPrefixProducer) and isinstance(p, InFlightLoadProducer)
    first = Cycle(now=0.0)
    approx.pre_request(first, req("y" * 512, "r0"), routed(("d", A)))
    c = Cycle(now=0.0)
    prompt = "y" * 1000
    assert p.request_tokens(c, req(prompt), A) == 128
    assert p.request_tokens(c, req(prompt), B) == 256


def test_a_capped_index_adds_the_prompt_tail_back() -> None:
    """maxPrefixTokensToMatch 128 indexes 2 blocks of 64; a 250-token prompt held whole in
    those blocks still owes 250 - 128 = 122 tokens."""
    cfg = load(
        "plugins:\n"
        "- type: approx-prefix-cache-producer\n"
        "  parameters: {autoTune: false, maxPrefixTokensToMatch: 128}\n"
        "- type: inflight-load-producer\n"
        "schedulingProfiles: [{name: d}]\n"
    )
    approx, p = cfg.plugins["approx-prefix-cache-producer"], cfg.plugins["inflight-load-producer"]
    assert isinstance(approx, ApproxPrefixProducer) and isinstance(p, InFlightLoadProducer)
    approx.pre_request(Cycle(now=0.0), req("z" * 1000, "r0"), routed(("d", A)))
    assert p.request_tokens(Cycle(now=0.0), req("z" * 1000), A) == 122


def test_unwatched_entries_go_after_the_staleness_threshold_watched_ones_stay() -> None:
    """PluginState reaps a request after 5 minutes without access unless its stream is bound
    (BindLiveness): here, until the watching filter has reported it."""
    p = producer()
    p.pre_request(Cycle(now=0.0), req("x" * 40, "lost"), routed(("d", A)))
    p.pre_request(Cycle(now=0.0), req("x" * 40, "kept"), routed(("d", B)))
    p.response("kept", "watched", 0.0)
    p.pre_request(Cycle(now=STALE_AFTER + 1), req("", "later"), routed(("d", B)))
    assert p.in_flight(A.name) == (0, 0)
    assert p.in_flight(B.name) == (2, 10)
    assert list(p.waiting) == ["later"] and list(p.watched) == ["kept"]


def test_in_flight_producer_reports_what_it_does_not_act_on() -> None:
    assert set(producer(outputRatio=2.0, syncCrossReplicaState=False).inert()) == {
        "outputRatio",
        "syncCrossReplicaState",
    }
    assert producer(addEstimatedOutputTokens=True, outputRatio=2.0).inert() == {}
    with pytest.raises(ConfigError, match="outputRatio"):
        producer(outputRatio=-1.0)


# --- token-load-scorer (scheduling/scorer/tokenload/token_load.go Score) ---


def test_token_load_scores_in_flight_plus_this_requests_tokens() -> None:
    """1 - min(load, threshold) / threshold: A carries 300 in flight, the request is 100
    tokens: 1 - 400/1000 = 0.6; B 1 - 100/1000 = 0.9; past the threshold 0; no load 1."""
    cfg = load(
        "plugins:\n"
        "- {type: token-load-scorer, parameters: {queueThresholdTokens: 1000}}\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: token-load-scorer}]}]\n"
    )
    scorer = cfg.plugins["token-load-scorer"]
    p = cfg.plugins["inflight-load-producer"]  # the default producer joins the config
    assert isinstance(scorer, TokenLoadScorer) and isinstance(p, InFlightLoadProducer)
    assert p in cfg.pre_request
    p.pre_request(Cycle(now=0.0), req("x" * 1200, "old"), routed(("d", A)))
    c = Cycle(now=0.0)
    assert scorer.score(c, req("x" * 400), [A, B]) == pytest.approx({A.name: 0.6, B.name: 0.9})
    assert scorer.score(c, req("x" * 8000), [A])[A.name] == 0.0
    assert scorer.score(c, req(""), [B]) == {B.name: 1.0}


def test_token_load_threshold_not_positive_is_the_default() -> None:
    scorer = make("token-load-scorer", "t", {"queueThresholdTokens": 0})
    assert isinstance(scorer, TokenLoadScorer) and scorer.threshold == 4194304
    assert "queueThresholdTokens" in scorer.inert()


def test_a_named_in_flight_producer_must_be_one() -> None:
    with pytest.raises(ConfigError, match="not a in flight load producer"):
        load(
            "plugins:\n"
            "- type: queue-scorer\n"
            "- {type: token-load-scorer, parameters: {inFlightLoadProducerName: queue-scorer}}\n"
            "schedulingProfiles: [{name: d}]\n"
        )


# --- prefix-cache-affinity-filter (scheduling/filter/prefixcacheaffinity/plugin.go) ---

AFFINITY = """
plugins:
- {type: approx-prefix-cache-producer, parameters: {autoTune: false}}
- type: prefix-cache-affinity-filter
  parameters: %s
schedulingProfiles: [{name: d, plugins: [{pluginRef: prefix-cache-affinity-filter}]}]
"""


def affinity(params: str = "{}") -> tuple[PrefixCacheAffinityFilter, InFlightLoadProducer]:
    """A filter whose prefix producer has seen a 1000-byte prompt (4 blocks) sent to A."""
    cfg = load(AFFINITY % params)
    f, approx = (
        cfg.plugins["prefix-cache-affinity-filter"],
        cfg.plugins["approx-prefix-cache-producer"],
    )
    assert isinstance(f, PrefixCacheAffinityFilter) and isinstance(approx, ApproxPrefixProducer)
    approx.pre_request(Cycle(now=0.0), req("w" * 1000, "r0"), routed(("d", A)))
    load_ = cfg.plugins.get("inflight-load-producer") or producer()
    assert isinstance(load_, InFlightLoadProducer)
    return f, load_


def test_affinity_keeps_the_sticky_endpoints() -> None:
    f, _ = affinity()
    assert f.filter(Cycle(now=0.0), req("w" * 1000), [A, B]) == [A]
    assert f.filter(Cycle(now=0.0), req("v" * 1000), [A, B]) == [A, B]  # no one sticky
    assert f.filter(Cycle(now=0.0), req("w" * 1000), [B]) == [B]


def test_affinity_breaks_when_the_sticky_ttft_is_too_far_behind() -> None:
    """TTFT_ms = in-flight tokens / 15928 x 1000: 400000 tokens on A are 25113 ms, 0 on B
    are 0: 25113 - 0 > 18000 keeps all; 200000 tokens (12556 ms) stay sticky."""
    f, ifl = affinity()
    ifl.pre_request(Cycle(now=0.0), req("x" * 800000, "busy"), routed(("d", A)))
    assert ifl.in_flight(A.name)[1] == 200000
    assert f.filter(Cycle(now=0.0), req("w" * 1000), [A, B]) == [A]
    ifl.pre_request(Cycle(now=0.0), req("x" * 800000, "busier"), routed(("d", A)))
    assert f.filter(Cycle(now=0.0), req("w" * 1000), [A, B]) == [A, B]


def test_affinity_explores_and_can_be_turned_off() -> None:
    f, _ = affinity("{explorationProbability: 1.0}")
    assert f.filter(Cycle(now=0.0, rng=random.Random(0)), req("w" * 1000), [A, B]) == [A, B]
    f, _ = affinity("{affinityThreshold: 0}")
    assert f.filter(Cycle(now=0.0), req("w" * 1000), [A, B]) == [A, B]
    f, _ = affinity("{maxTTFTPenaltyMs: 0}")  # always stick; no in-flight producer needed
    assert f.load is None
    assert f.filter(Cycle(now=0.0), req("w" * 1000), [A, B]) == [A]


def test_affinity_validates_as_upstream_and_reports_the_latency_predictor() -> None:
    with pytest.raises(ConfigError, match="peakPrefillThroughput must be > 0"):
        load(AFFINITY % "{peakPrefillThroughput: 0}")
    with pytest.raises(ConfigError, match="affinityThreshold"):
        load(AFFINITY % "{affinityThreshold: 1.5}")
    cfg = load(AFFINITY % "{ttftSource: latencyPredictor}")
    assert any("ttftSource" in line for line in cfg.ignored())
    assert "inflight-load-producer" not in cfg.plugins
    f, _ = affinity("{ttftSource: latencyPredictor}")
    assert f.filter(Cycle(now=0.0), req("w" * 1000), [A, B]) == [A]  # the gate never breaks


# --- the completion hook: the watching filter's phases reach the producer ---

CONFIG = """
plugins:
- type: token-load-scorer
schedulingProfiles: [{name: d, plugins: [{pluginRef: token-load-scorer}]}]
"""


def headers_msg(headers: dict[str, str], end: bool = False) -> pb.HttpHeaders:
    values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=end)


async def route(ext: ExtProc, rid: str, body: dict[str, object]) -> None:
    async def stream() -> AsyncIterator[pb.ProcessingRequest]:
        yield pb.ProcessingRequest(
            request_headers=headers_msg({wire.REQUEST_ID_HEADER: rid, ":path": "/v1/completions"}),
            protocol_config=pb.ProtocolConfiguration(request_body_mode=FULL_DUPLEX),
        )
        yield pb.ProcessingRequest(
            request_body=pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True)
        )

    _ = [out async for out in ext.Process(stream(), None)]


async def test_the_watching_filter_releases_in_flight_load() -> None:
    """Routed: 1 request, 100 tokens. The first response chunk frees the tokens, the end of
    the answer the request; a stream cut before its end releases too."""
    store = Datastore(StaticSource([A]))
    store.refresh()
    director = Director(Scheduler(load(CONFIG)), store, EppMetrics())
    ext = ExtProc(director)
    p = director.scheduler.config.plugins["inflight-load-producer"]
    assert isinstance(p, InFlightLoadProducer) and director.listeners == [p]
    await route(ext, "w1", {"model": "m", "prompt": "x" * 400})
    assert p.in_flight(A.name) == (1, 100)
    seen: list[tuple[int, int]] = []

    async def watch(rid: str, cut: bool) -> AsyncIterator[pb.ProcessingRequest]:
        yield pb.ProcessingRequest(
            request_headers=headers_msg({wire.REQUEST_ID_HEADER: rid}), observability_mode=True
        )
        yield pb.ProcessingRequest(response_headers=headers_msg({"content-type": "text/plain"}))
        seen.append(p.in_flight(A.name))
        yield pb.ProcessingRequest(response_body=pb.HttpBody(body=b"a"))
        seen.append(p.in_flight(A.name))
        if cut:
            return
        yield pb.ProcessingRequest(response_body=pb.HttpBody(body=b"b", end_of_stream=True))

    assert [out async for out in ext.Process(watch("w1", cut=False), None)] == []
    assert seen == [(1, 100), (1, 0)]
    assert p.in_flight(A.name) == (0, 0)
    await route(ext, "w2", {"model": "m", "prompt": "x" * 400})
    _ = [out async for out in ext.Process(watch("w2", cut=True), None)]
    assert p.in_flight(A.name) == (0, 0)


# --- the request's output cap (parsers/openai/openai.go maxOutputTokensForAPI) ---


@pytest.mark.parametrize(
    ("path", "body", "cap"),
    [
        ("/v1/chat/completions", {"messages": [], "max_completion_tokens": 7, "max_tokens": 9}, 7),
        ("/v1/chat/completions", {"messages": [], "max_completion_tokens": -1, "max_tokens": 9}, 9),
        ("/v1/completions", {"prompt": "p", "max_tokens": 5.0}, 5),
        ("/v1/completions", {"prompt": "p", "max_tokens": 5.5}, None),
        ("/v1/completions", {"prompt": "p", "max_completion_tokens": 5}, None),
        ("/v1/responses", {"max_output_tokens": 0, "max_tokens": 3}, 0),
    ],
)
def test_max_output_tokens_follow_each_apis_fields(
    path: str, body: dict[str, object], cap: int | None
) -> None:
    parsed = parse({":path": path}, json.dumps(body).encode(), None)
    assert parsed.max_output_tokens == cap


# --- header-label-affinity-scorer (scheduling/scorer/headerlabelaffinity/plugin.go Score) ---


def test_header_label_affinity_scores_the_matching_label() -> None:
    """1 where labels[labelKey] equals the header (its name lowered), 0 elsewhere and for an
    absent or empty header; Alpha, so refused without --allow-experimental-plugins."""
    text = (
        "plugins:\n"
        "- type: header-label-affinity-scorer\n"
        "  parameters: {headerName: X-Tenant, labelKey: tenant}\n"
        "schedulingProfiles: [{name: d}]\n"
    )
    with pytest.raises(ConfigError, match="allow-experimental-plugins"):
        load(text)
    scorer = load(text, allow_experimental=True).plugins["header-label-affinity-scorer"]
    gold = Endpoint("10.0.0.3", 8000, {"tenant": "gold"})
    r = Request("r", "m", "p", {"x-tenant": "gold"})
    assert scorer.score(Cycle(now=0.0), r, [gold, A]) == {gold.name: 1.0, A.name: 0.0}
    empty = Request("r", "m", "p", {"x-tenant": ""})
    assert scorer.score(Cycle(now=0.0), empty, [gold, Endpoint("h", 1, {"tenant": ""})]) == {
        gold.name: 0.0,
        "h:1": 0.0,
    }
    with pytest.raises(ConfigError, match="labelKey"):
        make("header-label-affinity-scorer", "h", {"headerName": "x"})


# --- topology (datalayer/extractor/topology, scheduling/{filter,scorer}/topologyaffinity) ---

TOPOLOGY = """
plugins:
- type: topology-extractor
  parameters: {hostname: node}
- type: topology-affinity-filter
  parameters: {minAffinity: %s}
- type: topology-affinity-scorer
- type: prefill-filter
- type: decode-filter
- type: always-disagg-pd-decider
- type: disagg-profile-handler
  parameters: {stageOrder: %s%s}
schedulingProfiles:
- name: prefill
  plugins:
  - {pluginRef: prefill-filter}
  - {pluginRef: topology-affinity-filter}
  - {pluginRef: topology-affinity-scorer}
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: topology-affinity-scorer}]
"""
ZONE = "topology.kubernetes.io/zone"


def pod(ip: str, role: str, **labels: str) -> Endpoint:
    return Endpoint(ip, 8000, {wire.ROLE_LABEL: role, **labels}, Metrics(updated=0.0))


DEC = pod("10.1.0.1", "decode", node="h1", **{ZONE: "z1"})
SAME_HOST = pod("10.1.0.2", "prefill", node="h1", **{ZONE: "z1"})
SAME_ZONE = pod("10.1.0.3", "prefill", node="h2", **{ZONE: "z1"})
ELSEWHERE = pod("10.1.0.4", "prefill")


def topology_run(min_affinity: str, order: str, eps: list[Endpoint]) -> Result:
    deciders = ", deciders: {prefill: always-disagg-pd-decider}" if order == "decode-first" else ""
    cfg = load(TOPOLOGY % (min_affinity, order, deciders), allow_experimental=True)
    return Scheduler(cfg).schedule(Cycle(now=0.0), Request("r", "m", "p"), eps)


def test_topology_scores_by_the_level_shared_with_the_decode_peer() -> None:
    """levelScores: host 1, zone 0.05, nothing 0; the prefill stage's peer is the decode
    pick, published before the prefill profile runs (disagg_profile_handler.go)."""
    result = topology_run("region", "decode-first", [DEC, SAME_HOST, SAME_ZONE, ELSEWHERE])
    scores = result.profiles["prefill"].scores["topology-affinity-scorer"]
    assert scores == {SAME_HOST.name: 1.0, SAME_ZONE.name: 0.05}  # region floor: no label
    assert result.profiles["decode"].scores["topology-affinity-scorer"] == {DEC.name: 0.0}
    assert result.profiles["prefill"].endpoint is SAME_HOST


def test_topology_filter_keeps_the_floor_and_fails_open() -> None:
    result = topology_run("host", "decode-first", [DEC, SAME_HOST, SAME_ZONE, ELSEWHERE])
    assert result.profiles["prefill"].candidates == 1
    result = topology_run("host", "decode-first", [DEC, SAME_ZONE, ELSEWHERE])
    assert result.profiles["prefill"].candidates == 2  # none on the host: all kept
    result = topology_run("zone", "decode-first", [DEC, SAME_ZONE, ELSEWHERE])
    assert result.profiles["prefill"].candidates == 1


def test_prefill_first_makes_the_prefill_pick_the_decode_peer() -> None:
    far = pod("10.1.0.5", "decode", node="h9")
    result = topology_run("host", "prefill-first", [SAME_HOST, DEC, far])
    # The prefill stage runs first, without a peer: its filter keeps all, its scores are 0.
    assert result.profiles["prefill"].scores["topology-affinity-scorer"] == {SAME_HOST.name: 0.0}
    decode = result.profiles["decode"].scores["topology-affinity-scorer"]
    assert decode == {DEC.name: 1.0, far.name: 0.0}


def test_topology_plugins_are_alpha_and_need_an_extractor() -> None:
    with pytest.raises(ConfigError, match="allow-experimental-plugins"):
        load(TOPOLOGY % ("host", "decode-first", ""))
    with pytest.raises(ConfigError, match="minAffinity"):
        load(TOPOLOGY % ("node", "decode-first", ""), allow_experimental=True)
    text = TOPOLOGY.replace("- type: topology-extractor\n  parameters: {hostname: node}\n", "")
    always = ", deciders: {prefill: always-disagg-pd-decider}"
    result = Scheduler(
        load(text % ("host", "decode-first", always), allow_experimental=True)
    ).schedule(Cycle(now=0.0), Request("r", "m", "p"), [DEC, SAME_HOST, SAME_ZONE])
    assert result.profiles["prefill"].candidates == 2
    assert set(result.profiles["prefill"].scores["topology-affinity-scorer"].values()) == {0.0}


# --- endpoint attributes: core-metrics-extractor customMetrics (extractor/metrics spec.go,
# extractor.go) and the endpoint-attribute filter and scorer (filter/endpointattribute
# filter.go, scorer/endpointattribute endpointattribute.go) ---

ATTRIBUTES = """
plugins:
- type: core-metrics-extractor
  parameters:
    engineConfigs:
    - name: vllm
      customMetrics:
      - {attributeKey: spec.decode, metricSpec: "vllm:spec_decode_efficiency{kind=draft}"}
    - name: other
      customMetrics: [{attributeKey: spec.decode, metricSpec: other_efficiency}]
- type: endpoint-attribute-filter
  parameters:
    attribute: spec.decode
    onMissing: %s
    fallbackOnEmpty: %s
    algorithm: {type: threshold, threshold: {operator: GreaterThanOrEqual, value: 0.5}}
- type: endpoint-attribute-scorer
  parameters:
    attributeKey: spec.decode
    algorithm: {type: linear_higher_is_better, normalization: %s}
schedulingProfiles: [{name: d}]
"""
PAGE = """# TYPE vllm:spec_decode_efficiency gauge
vllm:spec_decode_efficiency{kind="target"} 0.1
vllm:spec_decode_efficiency{kind="draft"} 0.7
vllm:spec_decode_efficiency{kind="draft"} 0.2
other_efficiency 0.9
"""


def attribute_config(
    missing: str = "Pass", fallback: str = "false", norm: str = "{}"
) -> dict[str, object]:
    return load(ATTRIBUTES % (missing, fallback, norm), allow_experimental=True).plugins


def with_attribute(port: int, value: float | None) -> Endpoint:
    e = Endpoint("10.2.0.1", port, {}, Metrics(updated=0.0))
    if value is not None:
        e.metrics.attributes["spec.decode"] = value
    return e


def test_custom_metrics_follow_the_engine_label_and_the_first_matching_series() -> None:
    """Without timestamps the first series whose labels match wins (getLatestMetric); the
    engine is the pod's llm-d.ai/engine-type label, else defaultEngine (vllm)."""

    ext = attribute_config()["core-metrics-extractor"]
    assert isinstance(ext, CoreMetricsExtractor)
    m = Metrics()
    parse_metrics(PAGE, m, 0.0, ext.custom_metrics({}))
    assert m.attributes == {"spec.decode": 0.7}
    parse_metrics(PAGE, m, 0.0, ext.custom_metrics({"llm-d.ai/engine-type": "other"}))
    assert m.attributes == {"spec.decode": 0.9}
    parse_metrics("other_efficiency 0.3\n", m, 0.0, ext.custom_metrics({}))
    assert m.attributes == {"spec.decode": 0.9}  # absent from the page: the last value stays
    assert ext.custom_metrics({"llm-d.ai/engine-type": "sglang"}) == []


def test_metric_specs_parse_as_upstreams() -> None:

    assert MetricSpec.parse(' a:b { x = y , z="w v" } ') == MetricSpec(
        "a:b", (("x", "y"), ("z", "w v"))
    )
    with pytest.raises(ValueError, match="not a valid metric specification"):
        MetricSpec.parse("9lives")
    with pytest.raises(ConfigError, match="invalid label pair"):
        load(ATTRIBUTES.replace("{kind=draft}", "{kind}") % ("Pass", "false", "{}"))


def test_attribute_filter_compares_and_handles_the_missing() -> None:
    """GreaterThanOrEqual 0.5: 0.7 kept, 0.2 dropped; missing kept (Pass) or dropped (Fail);
    nothing left gives all back only with fallbackOnEmpty."""
    hi, lo, none = with_attribute(1, 0.7), with_attribute(2, 0.2), with_attribute(3, None)
    f = attribute_config()["endpoint-attribute-filter"]
    assert f.filter(Cycle(now=0.0), req("p"), [hi, lo, none]) == [hi, none]
    f = attribute_config("Fail")["endpoint-attribute-filter"]
    assert f.filter(Cycle(now=0.0), req("p"), [hi, lo, none]) == [hi]
    assert f.filter(Cycle(now=0.0), req("p"), [lo]) == []
    f = attribute_config("Fail", "true")["endpoint-attribute-filter"]
    assert f.filter(Cycle(now=0.0), req("p"), [lo, none]) == [lo, none]


def test_attribute_scorer_normalises_fixed_or_adaptive() -> None:
    """Adaptive over 0.2..0.8: (v - 0.2) / 0.6; missing 0; fixed [0, 0.5] clamps 0.8 to 1;
    all equal scores 1 (scoreAdaptiveRange)."""
    a, b, c, none = (with_attribute(i, v) for i, v in enumerate((0.2, 0.5, 0.8, None)))
    s = attribute_config()["endpoint-attribute-scorer"]
    got = s.score(Cycle(now=0.0), req("p"), [a, b, c, none])
    assert got == pytest.approx({a.name: 0.0, b.name: 0.5, c.name: 1.0, none.name: 0.0})
    s = attribute_config(norm="{fixedRange: {min: 0, max: 0.5}}")["endpoint-attribute-scorer"]
    got = s.score(Cycle(now=0.0), req("p"), [a, c])
    assert got == pytest.approx({a.name: 0.4, c.name: 1.0})
    s = attribute_config()["endpoint-attribute-scorer"]
    assert s.score(Cycle(now=0.0), req("p"), [b, with_attribute(9, 0.5)]) == {
        b.name: 1.0,
        "10.2.0.1:9": 1.0,
    }
    with pytest.raises(ConfigError, match="min < max"):
        attribute_config(norm="{fixedRange: {min: 1, max: 1}}")
    with pytest.raises(ConfigError, match="at most one"):
        attribute_config(norm="{fixedRange: {min: 0, max: 1}, adaptiveRange: {}}")


def test_attribute_plugins_report_an_attribute_nothing_fills() -> None:
    text = (
        "plugins:\n"
        "- type: endpoint-attribute-scorer\n"
        "  parameters: {attributeKey: x, algorithm: {type: linear_lower_is_better}}\n"
        "- type: endpoint-attribute-filter\n"
        "  parameters: {attribute: x, algorithm: {type: threshold,"
        " threshold: {operator: LessThan}}}\n"
        "schedulingProfiles: [{name: d}]\n"
    )
    ignored = load(text, allow_experimental=True).ignored()
    assert [line.split(": ")[0] for line in ignored] == [
        "plugins[0].parameters.attributeKey",
        "plugins[1].parameters.attribute",
    ]
    assert (
        attribute_config("Pass", "false", "{}")
        and not load(ATTRIBUTES % ("Pass", "false", "{}"), allow_experimental=True).ignored()
    )
    with pytest.raises(ConfigError, match="threshold is required"):
        load(text.replace(", threshold: {operator: LessThan}", ""), allow_experimental=True)


# --- dcgm-data-source and dcgm-extractor (datalayer/source/dcgm, extractor/dcgm) ---

DCGM = """
plugins:
- type: dcgm-data-source
  parameters: {port: %d, interval: %s}
- type: dcgm-extractor
- type: endpoint-attribute-scorer
  parameters:
    attributeKey: GPUUtilization/dcgm-extractor
    algorithm: {type: linear_lower_is_better, normalization: {fixedRange: {min: 0, max: 1}}}
dataLayer:
  sources: [{pluginRef: dcgm-data-source%s}]
schedulingProfiles: [{name: d}]
"""
WIRED = ", extractors: [{pluginRef: dcgm-extractor}]"
DCGM_PAGE = """# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",pod="a"} 35
DCGM_FI_DEV_GPU_UTIL{gpu="1",pod="a"} 80
"""


def test_dcgm_reads_the_busiest_gpu_as_a_fraction() -> None:
    """max(35, 80) / 100 = 0.8 (Extractor.Extract); the scorer, lower is better over [0, 1],
    gives 1 - 0.8 = 0.2. The interval rounds to whole --refresh-metrics-interval ticks."""

    cfg = load(DCGM % (9400, "1s", WIRED), allow_experimental=True)
    src = cfg.plugins["dcgm-data-source"]
    assert isinstance(src, DCGMDataSource) and src.extractor is not None
    assert src.url(A) == "http://10.0.0.1:9400/metrics"
    assert src.period(0.05) == pytest.approx(1.0)
    e = Endpoint("10.3.0.1", 8000, {}, Metrics(updated=0.0))
    src.read(DCGM_PAGE, e.metrics)
    assert e.metrics.attributes == {"GPUUtilization/dcgm-extractor": 0.8}
    scorer = cfg.plugins["endpoint-attribute-scorer"]
    assert scorer.score(Cycle(now=0.0), req("p"), [e]) == pytest.approx({e.name: 0.2})
    assert cfg.ignored() == []
    short = load(DCGM % (9400, "70ms", WIRED), allow_experimental=True).plugins
    assert short["dcgm-data-source"].period(0.05) == pytest.approx(0.05)


def test_dcgm_without_an_extractor_scrapes_nothing_and_says_so() -> None:
    cfg = load(DCGM % (9400, "1s", ""), allow_experimental=True)
    assert sorted(line.split(": ")[0] for line in cfg.ignored()) == [
        "plugins[0].parameters.interval",
        "plugins[0].parameters.port",
        "plugins[2].parameters.attributeKey",
    ]
    with pytest.raises(ConfigError, match="allow-experimental-plugins"):
        load(DCGM % (9400, "1s", WIRED))


async def test_the_datastore_scrapes_dcgm_beside_the_engine() -> None:
    """A side poll fills the attribute; its failure never marks the endpoint down."""

    async def serve(text: str) -> tuple[web.AppRunner, int]:
        async def page(_: web.Request) -> web.Response:
            return web.Response(text=text)

        app = web.Application()
        app.router.add_get("/metrics", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    engine, engine_port = await serve("vllm:num_requests_waiting 3\n")
    dcgm, dcgm_port = await serve(DCGM_PAGE)
    cfg = load(DCGM % (dcgm_port, "10ms", WIRED), allow_experimental=True)
    src = cfg.plugins["dcgm-data-source"]
    assert isinstance(src, DCGMDataSource)
    ep = Endpoint("127.0.0.1", engine_port)
    store = Datastore(StaticSource([ep]), interval=0.02, side=[src])
    task = asyncio.create_task(store.run())
    try:
        for _ in range(500):
            if ep.metrics.attributes and ep.metrics.waiting == 3:
                break
            await asyncio.sleep(0.01)
        assert ep.metrics.attributes == {"GPUUtilization/dcgm-extractor": 0.8}
        await dcgm.cleanup()
        await asyncio.sleep(0.1)
        assert ep.metrics.ready and ep.metrics.attributes["GPUUtilization/dcgm-extractor"] == 0.8
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.cleanup()


# --- static-usage-limit-policy (flowcontrol/usagelimits/usagelimitpolicy.go; the processor's
# dispatchCycle holds a band while saturation >= its ceiling) ---

USAGE = """
featureGates: [flowControl]
plugins:
- {type: utilization-detector, parameters: {queueDepthThreshold: 4}}
- {type: static-usage-limit-policy, parameters: {threshold: 0.5}}
flowControl:
  saturationDetector: {pluginRef: utilization-detector}
  usageLimitPolicyPluginRef: static-usage-limit-policy
schedulingProfiles: [{name: d}]
"""


def test_static_usage_limit_holds_the_queue_at_its_threshold() -> None:
    """Saturation is the mean of waiting / 4: 1 waiting is 0.25 (under 0.5, dispatch), 2
    is 0.5 (at the ceiling, hold), where upstream's default ceiling 1 would still dispatch."""
    store = Datastore(StaticSource([ep := Endpoint("10.4.0.1", 8000)]))
    store.refresh()
    director = Director(Scheduler(load(USAGE)), store, EppMetrics())
    assert director.gate is not None
    ep.metrics = Metrics(waiting=1, updated=0.0)
    assert director.gate._room(0, 0.0)
    ep.metrics = Metrics(waiting=2, updated=0.0)
    assert not director.gate._room(0, 0.0)
    default = Director(
        Scheduler(
            load(USAGE.replace("  usageLimitPolicyPluginRef: static-usage-limit-policy\n", ""))
        ),
        store,
        EppMetrics(),
    )
    assert default.gate is not None and default.gate._room(0, 0.0)
    ignored = load(USAGE.replace("  usageLimitPolicyPluginRef: static-usage-limit-policy\n", ""))
    assert [line.split(": ")[0] for line in ignored.ignored()] == [
        "plugins[1].parameters.threshold"
    ]
    assert load(USAGE).ignored() == []


# --- session-id-producer (requestcontrol/dataproducer/sessionid/producer.go extract) ---


def test_session_id_comes_from_the_header_or_the_cookie() -> None:
    by_header = make("session-id-producer", "s", {"headerName": " X-Session-Id "})
    r = Request("r", "m", "p", {"x-session-id": " abc ", "cookie": "a=1; sid=xyz"})
    assert by_header.session_id(r) == "abc"
    by_cookie = make("session-id-producer", "s", {"cookieName": "sid"})
    assert by_cookie.session_id(r) == "xyz"
    assert by_cookie.session_id(Request("r", "m", "p", {"cookie": "sidx=1"})) == ""
    for both in ({}, {"headerName": "a", "cookieName": "b"}, {"headerName": " "}):
        with pytest.raises(ConfigError, match="exactly one"):
            make("session-id-producer", "s", both)
