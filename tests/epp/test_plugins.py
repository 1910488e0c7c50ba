"""Each plugin against the semantics of PROTOCOLS.md section 2, in virtual time."""

from __future__ import annotations

import random

import pytest
import xxhash

from pdserve.epp.config import load
from pdserve.epp.framework import ConfigError, make
from pdserve.epp.plugins.handlers import REASON
from pdserve.epp.plugins.prefix import PrecisePrefixProducer, prompt_hashes
from pdserve.epp.scheduler import Scheduler
from pdserve.epp.types import Cycle, Endpoint, Metrics, Request
from pdserve.wire import PREFILLER_HEADER, ROLE_LABEL


def ep(
    port: int, role: str | None = None, waiting: int = 0, kv: float = 0.0, running: int = 0
) -> Endpoint:
    labels = {ROLE_LABEL: role} if role else {}
    return Endpoint("10.0.0.1", port, labels, Metrics(waiting, running, kv, updated=0.0))


def req(prompt: str = "hello", model: str = "m", **headers: str) -> Request:
    return Request("r1", model, prompt, headers)


def cycle(seed: int = 0) -> Cycle:
    return Cycle(now=0.0, rng=random.Random(seed))


def test_hashes_chain_from_the_model_name() -> None:
    text = "a" * 64 + "b" * 64 + "c" * 10
    hashes = prompt_hashes("m", text, 64, 256)
    assert len(hashes) == 2  # partial trailing block is not hashed
    seed = xxhash.xxh64_intdigest(b"m")
    first = xxhash.xxh64_intdigest(b"a" * 64, seed=seed)
    assert hashes == [first, xxhash.xxh64_intdigest(b"b" * 64, seed=first)]
    assert prompt_hashes("other", text, 64, 256)[0] != first
    assert len(prompt_hashes("m", "x" * 6400, 64, 3)) == 3


def test_prefix_scorer_longest_consecutive_match_over_total() -> None:
    scorer = make("prefix-cache-scorer", "p", {"hashBlockSize": 4})
    a, b = ep(1), ep(2)
    c = cycle()
    from pdserve.epp.types import ProfileResult, Result

    scorer.pre_request(c, req("aaaabbbbcccc"), Result({"d": ProfileResult(a)}, "d"))
    c2 = cycle()
    scores = scorer.score(c2, req("aaaabbbbxxxxyyyy"), [a, b])
    assert scores == {a.name: 2 / 4, b.name: 0.0}
    # a different first block breaks the chain even if later text is equal
    assert scorer.score(cycle(), req("zzzzbbbbcccc"), [a])[a.name] == 0.0


def test_prefix_scorer_lru_capacity_per_server() -> None:
    scorer = make("prefix-cache-scorer", "p", {"hashBlockSize": 4, "lruCapacityPerServer": 2})
    a = ep(1)
    from pdserve.epp.types import ProfileResult, Result

    scorer.pre_request(cycle(), req("aaaabbbbcccc"), Result({"d": ProfileResult(a)}, "d"))
    assert scorer.index.size() == 2  # the oldest block was evicted
    assert scorer.score(cycle(), req("aaaabbbbcccc"), [a])[a.name] == 0.0  # chain starts missing


@pytest.mark.parametrize(("q", "expected"), [(0, 0.5), (64, 0.25), (128, 0.0), (500, 0.0)])
def test_load_aware_scorer(q: int, expected: float) -> None:
    e = ep(1, waiting=q)
    assert make("load-aware-scorer", "l", {}).score(cycle(), req(), [e])[e.name] == expected


def test_queue_scorer_min_max_and_kv_scorer() -> None:
    a, b, c = ep(1, waiting=0, kv=0.2), ep(2, waiting=5), ep(3, waiting=10, kv=0.9)
    q = make("queue-scorer", "q", {}).score(cycle(), req(), [a, b, c])
    assert q == {a.name: 1.0, b.name: 0.5, c.name: 0.0}
    assert make("queue-scorer", "q", {}).score(cycle(), req(), [a, ep(4)]) == {
        a.name: 1.0,
        "10.0.0.1:4": 1.0,
    }
    kv = make("kv-cache-utilization-scorer", "k", {}).score(cycle(), req(), [a, c])
    assert kv[a.name] == pytest.approx(0.8) and kv[c.name] == pytest.approx(0.1)


def test_session_affinity_scorer() -> None:
    import base64

    a, b = ep(1), ep(2)
    token = base64.b64encode(b.name.encode()).decode()
    s = make("session-affinity-scorer", "s", {}).score(
        cycle(), req(**{"x-session-token": token}), [a, b]
    )
    assert s == {a.name: 0.0, b.name: 1.0}


def test_filters_by_role_and_labels() -> None:
    d, p, both, none = ep(1, "decode"), ep(2, "prefill"), ep(3, "both"), ep(4)
    eps = [d, p, both, none]
    assert make("decode-filter", "d", {}).filter(cycle(), req(), eps) == [d, both, none]
    assert make("prefill-filter", "p", {}).filter(cycle(), req(), eps) == [p]
    by = make(
        "by-label", "b", {"label": ROLE_LABEL, "validValues": ["prefill"], "allowsNoLabel": True}
    )
    assert by.filter(cycle(), req(), eps) == [p, none]
    sel = make(
        "by-label-selector",
        "s",
        {"matchExpressions": [{"key": ROLE_LABEL, "operator": "In", "values": ["decode", "both"]}]},
    )
    assert sel.filter(cycle(), req(), eps) == [d, both]
    with pytest.raises(ConfigError):
        make("by-label-selector", "s", {"matchExpressions": [{"key": "x", "operator": "Gt"}]})


def test_max_score_picker_breaks_ties_at_random() -> None:
    a, b, c = ep(1), ep(2), ep(3)
    picker = make("max-score-picker", "m", {})
    picks = {picker.pick(cycle(seed), [(a, 1.0), (b, 1.0), (c, 0.5)]).name for seed in range(40)}
    assert picks == {a.name, b.name}
    assert picker.pick(cycle(), []) is None


def test_weighted_random_picker_follows_scores() -> None:
    a, b = ep(1), ep(2)
    picker = make("weighted-random-picker", "w", {})
    rng = cycle(1)
    counts = {a.name: 0, b.name: 0}
    for _ in range(2000):
        counts[picker.pick(rng, [(a, 0.9), (b, 0.1)]).name] += 1
    assert 0.85 < counts[a.name] / 2000 < 0.95
    counts = {a.name: 0, b.name: 0}
    for _ in range(2000):
        counts[picker.pick(rng, [(a, 0.0), (b, 0.0)]).name] += 1
    assert 0.45 < counts[a.name] / 2000 < 0.55  # all-zero scores: uniform


PD = """
plugins:
  - type: pd-profile-handler
    parameters: {threshold: 100, hashBlockSize: 4}
  - type: prefill-header-handler
  - type: prefill-filter
  - type: decode-filter
  - type: prefix-cache-scorer
    parameters: {hashBlockSize: 4}
  - type: queue-scorer
schedulingProfiles:
  - name: prefill
    plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]
  - name: decode
    plugins:
      - pluginRef: decode-filter
      - pluginRef: prefix-cache-scorer
        weight: 2.5
      - pluginRef: queue-scorer
"""


def test_pd_handler_threshold_and_prefix_hits() -> None:
    sched = Scheduler(load(PD))
    d1, d2, p1 = ep(1, "decode"), ep(2, "decode", waiting=3), ep(3, "prefill")
    eps = [d1, d2, p1]
    short = sched.schedule(cycle(), req("x" * 40), eps)
    assert short.endpoint is d1 and PREFILLER_HEADER not in short.headers  # 40 < 100
    long_prompt = "y" * 400
    first = sched.schedule(cycle(), req(long_prompt), eps)
    assert first.endpoint is d1 and first.headers[PREFILLER_HEADER] == p1.name
    # The same prompt again is fully cached on d1: (1 - 1) x 400 < 100, no prefill.
    again = sched.schedule(cycle(), req(long_prompt), eps)
    assert again.endpoint is d1 and PREFILLER_HEADER not in again.headers
    # No prefill pod: decode-only, still served.
    alone = sched.schedule(cycle(), req("z" * 400), [d1])
    assert alone.endpoint is d1 and PREFILLER_HEADER not in alone.headers


def test_pd_reason_names_the_uncached_part_and_the_threshold() -> None:
    sched = Scheduler(load(PD))
    d1, p1 = ep(1, "decode"), ep(3, "prefill")

    def reason(prompt: str, eps: list[Endpoint]) -> str:
        c = cycle()
        sched.schedule(c, req(prompt), eps)
        return c.state[REASON]

    assert reason("y" * 400, [d1, p1]) == "disaggregated: 400 uncached characters >= threshold 100"
    assert reason("x" * 40, [d1, p1]) == "decode-only: 40 uncached characters < threshold 100"
    assert reason("z" * 400, [d1, ep(4, "other")]) == (
        "decode-only: no endpoint passed profile 'prefill' "
        "(wanted 400 uncached characters >= threshold 100)"
    )
    tokens = disagg("type: prefix-based-pd-decider, parameters: {nonCachedTokens: 8}")
    c = cycle()
    tokens.schedule(c, req("w" * 100), [d1, p1])
    assert c.state[REASON] == "disaggregated: 25 uncached tokens >= nonCachedTokens 8"


def test_a_default_prefix_scorer_learns_where_prompts_went() -> None:
    """The v0.3 shape with an unparametrized scorer the P/D handler reads through: its
    producer must be the config's, taught by the pre-request hook, whatever the bind order."""
    sched = Scheduler(
        load("""
plugins:
  - type: pd-profile-handler
    parameters: {threshold: 200, hashBlockSize: 64}
  - type: prefill-header-handler
  - type: prefill-filter
  - type: decode-filter
  - type: prefix-cache-scorer
schedulingProfiles:
  - {name: prefill, plugins: [{pluginRef: prefill-filter}]}
  - {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}]}
""")
    )
    d1, d2, p1 = ep(1, "decode"), ep(2, "decode"), ep(3, "prefill")
    prefix = "A long shared system prompt about KV caches and routing. " * 40
    first = sched.schedule(cycle(0), req(f"{prefix} question 0"), [d1, d2, p1]).endpoint
    assert first is not None
    for i in range(1, 6):
        result = sched.schedule(cycle(i), req(f"{prefix} question {i}"), [d1, d2, p1])
        assert result.endpoint is first, i
        # 9 blocks of 64 estimated tokens: all but the last, where the questions differ.
        assert result.profiles["decode"].scores["prefix-cache-scorer"][first.name] == 8 / 9


def test_scores_are_clamped_and_weighted() -> None:
    sched = Scheduler(load(PD))
    d1, d2 = ep(1, "decode", waiting=0), ep(2, "decode", waiting=10)
    result = sched.schedule(cycle(), req("q" * 10), [d1, d2])
    assert result.profiles["decode"].scores["queue-scorer"] == {d1.name: 1.0, d2.name: 0.0}
    assert result.endpoint is d1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins: [{type: nope}]\nschedulingProfiles: [{name: a}]", "unknown plugin type 'nope'"),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: "
            "[{pluginRef: missing}]}]",
            "schedulingProfiles[0].plugins[0].pluginRef",
        ),
        (
            "plugins: [{type: load-aware-scorer, parameters: {threshold: many}}]\n"
            "schedulingProfiles: [{name: a}]",
            "plugins[0].parameters.threshold: Input should be a valid integer",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: "
            "[{pluginRef: queue-scorer, weight: heavy}]}]",
            "weight: Input should be a valid number",
        ),
        (
            "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a}, {name: b}]",
            "several profiles need a profile handler",
        ),
        ("plugins: [\n", "YAML syntax error"),
    ],
)
def test_bad_configs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(text)


def test_defaults_single_handler_and_max_score_picker() -> None:
    cfg = load(
        "plugins: [{type: queue-scorer}]\nschedulingProfiles: "
        "[{name: only, plugins: [{pluginRef: queue-scorer, weight: 2}]}]"
    )
    assert cfg.handler.type_name == "single-profile-handler"
    assert cfg.profiles["only"].picker.type_name == "max-score-picker"
    assert cfg.profiles["only"].scorers[0][1] == 2.0


def disagg(decider: str) -> Scheduler:
    """The later (disagg-*) names, with `decider` as the plugin named "decider"."""
    return Scheduler(
        load(f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: disagg-profile-handler
    parameters: {{deciderPluginName: decider}}
  - {{name: decider, {decider}}}
  - type: disagg-headers-handler
  - type: prefill-filter
  - type: decode-filter
schedulingProfiles:
  - {{name: prefill, plugins: [{{pluginRef: prefill-filter}}]}}
  - {{name: decode, plugins: [{{pluginRef: decode-filter}}]}}
""")
    )


def test_later_aliases_load() -> None:
    sched = disagg("type: prefix-based-pd-decider, parameters: {nonCachedTokens: 8}")
    d, p = ep(1, "decode"), ep(2, "prefill")
    assert PREFILLER_HEADER in sched.schedule(cycle(), req("w" * 100), [d, p]).headers
    assert PREFILLER_HEADER not in sched.schedule(cycle(), req("w" * 8), [d, p]).headers


def test_always_disagg_decider_prefills_even_a_short_prompt() -> None:
    d, p = ep(1, "decode"), ep(2, "prefill")
    result = disagg("type: always-disagg-pd-decider").schedule(cycle(), req("hi"), [d, p])
    assert result.endpoint is d and result.headers[PREFILLER_HEADER] == p.name


def test_decider_ref_must_name_a_decider() -> None:
    with pytest.raises(
        ConfigError, match="deciderPluginName: 'q' is a queue-scorer, not a decider"
    ):
        load(
            "plugins: [{type: pd-profile-handler, parameters: {deciderPluginName: q}},"
            " {type: queue-scorer, name: q}]\n"
            "schedulingProfiles: [{name: decode, plugins: [{pluginRef: q}]}, {name: prefill}]"
        )


def test_active_request_scorer_prefers_fewer_running() -> None:
    scorer = make("active-request-scorer", "a", {})
    idle, some, busy = ep(1, running=0), ep(2, running=3), ep(3, running=6)
    scores = scorer.score(cycle(), req(), [idle, some, busy])
    assert scores == {idle.name: 1.0, some.name: 0.5, busy.name: 0.0}
    # all equal: no preference, every endpoint gets the same score
    even = scorer.score(cycle(), req(), [ep(4, running=2), ep(5, running=2)])
    assert len(set(even.values())) == 1


def test_lora_affinity_scorer_levels() -> None:
    scorer = make("lora-affinity-scorer", "l", {})

    def lora_ep(port: int, running: set[str], waiting: set[str], max_loras: int) -> Endpoint:
        m = Metrics(0, 0, 0.0, 0.0, frozenset(running), frozenset(waiting), max_loras)
        return Endpoint("10.0.0.1", port, {}, m)

    loaded = lora_ep(1, {"sql"}, set(), 1)
    queued = lora_ep(2, {"chat"}, {"sql"}, 1)
    room = lora_ep(3, {"chat"}, set(), 2)
    full = lora_ep(4, {"chat"}, set(), 1)
    scores = scorer.score(cycle(), req(model="sql"), [loaded, queued, room, full])
    # upstream's order: active 1, room for one more 0.8, waiting 0.6, else 0
    assert scores == {loaded.name: 1.0, queued.name: 0.6, room.name: 0.8, full.name: 0.0}


def test_random_picker_is_uniform_and_seeded() -> None:
    picker = make("random-picker", "r", {})
    scored = [(ep(1), 0.9), (ep(2), 0.1), (ep(3), 0.0)]
    picks = [picker.pick(cycle(seed), scored) for seed in range(600)]
    counts = {e.name: sum(p is e for p in picks) for e, _ in scored}
    assert all(150 <= n <= 250 for n in counts.values()), counts  # scores are ignored
    assert picker.pick(cycle(7), scored) is picker.pick(cycle(7), scored)
    assert picker.pick(cycle(), []) is None


def test_precise_prefix_scorer_follows_kv_events() -> None:
    scorer = make("precise-prefix-cache-scorer", "pp", {"blockSize": 4})
    assert isinstance(scorer, PrecisePrefixProducer)
    prompt = "the quick brown fox jumps over the lazy dog " * 4
    hashes = scorer.scheme.hashes(scorer.request_tokens(req(prompt)), 4)  # as KV events carry
    assert len(hashes) >= 4
    a, b = ep(1), Endpoint("10.0.0.2", 2)
    scorer.apply_event(a.address, ["BlockStored", hashes, None, [], 4, None])
    scorer.apply_event(b.name, ["BlockStored", hashes[:2], None, [], 4, None])
    total = len(hashes)
    assert scorer.score(cycle(), req(prompt), [a, b]) == {a.name: 1.0, b.name: 2 / total}
    # a removed block in the middle ends the run there
    scorer.apply_event(a.address, ["BlockRemoved", [hashes[1]]])
    assert scorer.score(cycle(), req(prompt), [a])[a.name] == 1 / total
    scorer.apply_event(b.name, ["AllBlocksCleared"])
    assert scorer.score(cycle(), req(prompt), [b])[b.name] == 0.0


@pytest.mark.parametrize("handler", ["pd-profile-handler", "disagg-profile-handler"])
@pytest.mark.parametrize("key", ["decodeProfile", "prefillProfile"])
def test_pd_handler_profile_names_are_checked_at_load(handler: str, key: str) -> None:
    params = "{threshold: 100," if handler == "pd-profile-handler" else "{"
    text = PD.replace("type: pd-profile-handler", f"type: {handler}").replace(
        "{threshold: 100, hashBlockSize: 4}", f"{params} {key}: missing}}"
    )
    with pytest.raises(ConfigError) as err:
        load(text, "cfg.yaml")
    assert str(err.value) == (
        f"cfg.yaml: plugins[0].parameters.{key}: no scheduling profile named 'missing'"
    )


def test_prefix_hit_ratio_counts_one_hit_per_request() -> None:
    """P/D chooses two endpoints per request; both holding the prefix is still one hit."""
    sched = Scheduler(load(PD.replace("threshold: 100", "threshold: 0")))
    scorer = sched.config.plugins["prefix-cache-scorer"]
    d, p = ep(1, "decode"), ep(2, "prefill")
    scorer.index.add(d.name, prompt_hashes("m", "y" * 400, 4, 256))
    scorer.index.add(p.name, prompt_hashes("m", "y" * 400, 4, 256))
    result = sched.schedule(cycle(), req("y" * 400), [d, p])
    assert result.endpoint is d and result.headers[PREFILLER_HEADER] == p.name
    assert (scorer.hits, scorer.lookups) == (1, 1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("1.5h", 5400.0), ("200ms", 0.2), ("10µs", 1e-5), (".5s", 0.5), ("0", 0.0)],
)
def test_flags_and_parameters_read_go_durations_alike(text: str, seconds: float) -> None:
    from pdserve.epp.framework import go_duration
    from pdserve.flags import duration

    assert duration(text) == pytest.approx(seconds)
    assert go_duration(text, "t") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "0.05", "", "-1s", "1m30", "1x", "s"])
def test_a_bare_number_or_a_sign_is_not_a_duration(text: str) -> None:
    import argparse

    from pdserve.epp.framework import go_duration
    from pdserve.flags import duration

    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        duration(text)
    with pytest.raises(ConfigError, match=r"^parameters\.t: not a duration"):
        go_duration(text, "t")


CACHE_TRACKING = """
plugins:
- type: prefix-cache-scorer
  parameters:
    mode: cache_tracking
    kvEventsConfig: {zmqEndpoint: "tcp://127.0.0.1:5999"}
    indexerConfig: {tokenProcessorConfig: {blockSize: 4}}
- type: decode-filter
schedulingProfiles:
- name: a
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}]
"""


def test_a_cache_tracking_scorers_own_producer_is_fed_kv_events_and_sized() -> None:
    """The v0.2-v0.4 scorer builds its precise producer itself: the server's KV-event
    subscription must see it, and the indexer gauge must count its blocks (enableMetrics
    unset)."""
    from pdserve.epp.datastore import Datastore, StaticSource
    from pdserve.epp.director import Director
    from pdserve.epp.metrics import EppMetrics
    from pdserve.epp.server import kv_event_feeds

    cfg = load(CACHE_TRACKING)
    scorer = cfg.plugins["prefix-cache-scorer"]
    feeds = kv_event_feeds(cfg, "tcp://*:5557")
    assert feeds == [(scorer.source, "tcp://127.0.0.1:5999")]
    producer = feeds[0][0]
    prompt = "the quick brown fox jumps over the lazy dog " * 4
    hashes = producer.scheme.hashes(producer.request_tokens(req(prompt)), 4)
    a = ep(1, "decode")
    producer.apply_event(a.address, ["BlockStored", hashes, None, [], 4, None])
    assert scorer.score(cycle(), req(prompt), [a]) == {a.name: 1.0}
    store = Datastore(StaticSource([a]))
    store.refresh()
    picker = Director(Scheduler(cfg), store, EppMetrics())
    picker.decide({}, b'{"model": "m", "prompt": "hi"}')
    gauge = "inference_extension_prefix_indexer_size"
    assert picker.metrics.registry.get_sample_value(gauge) == len(set(hashes))
    producer.apply_event(a.address, ["AllBlocksCleared"])
    picker.decide({}, b'{"model": "m", "prompt": "hi"}')
    assert picker.metrics.registry.get_sample_value(gauge) == 0


def test_a_legacy_scorers_producer_is_reported_once_and_named_apart() -> None:
    """Registered in the config, the producer reports its inert parameters itself (at the
    scorer's path) and the scorer no longer does; its derived name must be free."""
    pool = "blockSize: 4}, tokenizersPoolConfig: {workersCount: 2}"
    cfg = load(CACHE_TRACKING.replace("blockSize: 4}", pool))
    assert cfg.ignored() == [
        "plugins[0].parameters.indexerConfig.tokenizersPoolConfig.workersCount: "
        "a prompt is tokenized once per scheduling cycle, on the request path"
    ]
    with pytest.raises(ConfigError, match="'prefix-cache-scorer-producer', is taken"):
        taken = "- {type: decode-filter, name: prefix-cache-scorer-producer}\n"
        load(CACHE_TRACKING.replace("- type: decode-filter\n", taken))


def test_both_pd_handlers_word_a_missing_prefill_endpoint_alike() -> None:
    """One helper for the disagg and the deprecated pd handler: the P/D verdict stays in it."""
    from pdserve.epp.plugins.handlers import no_prefill_endpoint

    c = cycle()
    c.state[REASON] = "disaggregated: 400 uncached tokens >= nonCachedTokens 8"
    no_prefill_endpoint(c, "pre")
    assert c.state[REASON] == (
        "decode-only: no endpoint passed profile 'pre' (wanted 400 uncached tokens >= "
        "nonCachedTokens 8)"
    )


def test_endpoints_whose_last_scrape_failed_are_never_picked() -> None:
    """A dead prefiller gives decode-only, a dead decoder leaves the other decoder."""
    sched = Scheduler(load(PD))
    d1, d2, p1 = ep(1, "decode"), ep(2, "decode", waiting=3), ep(3, "prefill")
    p1.metrics.down = True
    result = sched.schedule(cycle(), req("y" * 400), [d1, d2, p1])
    assert result.endpoint is d1 and PREFILLER_HEADER not in result.headers
    d1.metrics.down = True
    assert sched.schedule(cycle(), req("y" * 400), [d1, d2, p1]).endpoint is d2
