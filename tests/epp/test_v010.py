"""llm-d-router v0.10 configs and plugins: each family against the numbers upstream's
formulas give for the same inputs (worked out in the comments), the loader's one-line
errors, and every shared upstream config through `pdserve epp --check` (conformance)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import xxhash

from pdserve.epp.config import load
from pdserve.epp.framework import make
from pdserve.epp.plugins.flowcontrol import ProbabilisticAdmitter
from pdserve.epp.plugins.handlers import REASON
from pdserve.epp.plugins.prefix import token_block_hashes
from pdserve.epp.scheduler import Scheduler
from pdserve.epp.types import Cycle, Endpoint, Metrics, ProfileResult, Request, Result
from pdserve.wire import DATA_PARALLEL_HEADER, PREFILLER_HEADER, ROLE_LABEL
from testkit import PDSERVE, REFERENCE


def ep(port: int, role: str | None = None, waiting: int = 0, kv: float = 0.0) -> Endpoint:
    labels = {ROLE_LABEL: role} if role else {}
    return Endpoint("10.0.0.1", port, labels, Metrics(waiting, 0, kv, updated=0.0))


def req(prompt: str, priority: int = 0) -> Request:
    return Request("r", "m", prompt, {}, priority)


def cycle(seed: int = 0) -> Cycle:
    return Cycle(now=0.0, rng=random.Random(seed))


def test_token_block_hashes_follow_upstreams_chain() -> None:
    # 266 bytes, padded to 268 = 67 tokens; 64-token blocks: one full, one partial of 3.
    text = "a" * 256 + "b" * 10
    first = xxhash.xxh64_intdigest(b"m")
    h1 = xxhash.xxh64_intdigest(
        xxhash.xxh64_intdigest(b"a" * 256).to_bytes(8, "little") + first.to_bytes(8, "little")
    )
    block2 = xxhash.xxh64_intdigest(b"b" * 10 + b"\0\0")
    h2 = xxhash.xxh64_intdigest(block2.to_bytes(8, "little") + h1.to_bytes(8, "little"))
    assert token_block_hashes("m", text, 64, 100) == [h1, h2]
    assert len(token_block_hashes("m", text, 64, 1)) == 1


V010_PD = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters: {blockSizeTokens: 16, autoTune: false}
- type: prefix-cache-scorer
- type: prefill-filter
- type: decode-filter
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 16}
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}]}
"""


def reason(sched: Scheduler, prompt: str, eps: list[Endpoint]) -> tuple[str, bool]:
    c = cycle()
    result = sched.schedule(c, req(prompt), eps)
    return c.state[REASON], PREFILLER_HEADER in result.headers


def test_prefix_decider_counts_tokens_at_the_threshold() -> None:
    """Upstream: P/D iff tokens >= nonCachedTokens and tokens - cached blocks x block tokens
    >= nonCachedTokens. blockSizeTokens 16 is raised to upstream's minimum, 64."""
    sched = Scheduler(load(V010_PD))
    d, p = ep(1, "decode"), ep(2, "prefill")
    assert reason(sched, "x" * 60, [d, p]) == (  # 15 tokens
        "decode-only: 15 prompt tokens < nonCachedTokens 16",
        False,
    )
    assert reason(sched, "y" * 64, [d, p]) == (  # 16 tokens, nothing cached yet
        "disaggregated: 16 uncached tokens >= nonCachedTokens 16",
        True,
    )
    # 400 bytes = 100 tokens; after the first request d holds both blocks (64 + 36 tokens):
    # 100 - 2 x 64 = -28 < 16.
    assert reason(sched, "z" * 400, [d, p])[1] is True
    assert reason(sched, "z" * 400, [d, p]) == (
        "decode-only: -28 uncached tokens < nonCachedTokens 16",
        False,
    )
    assert reason(sched, "v" * 400, [d]) == (  # a new prompt wants P/D: no prefill pod
        "decode-only: no endpoint passed profile 'prefill' "
        "(wanted 100 uncached tokens >= nonCachedTokens 16)",
        False,
    )


def test_decider_zero_disables_and_prefill_first_runs_prefill_then_decode() -> None:
    off = Scheduler(load(V010_PD.replace("nonCachedTokens: 16", "nonCachedTokens: 0")))
    d, p = ep(1, "decode"), ep(2, "prefill")
    assert reason(off, "w" * 4000, [d, p]) == (
        "decode-only: nonCachedTokens 0 (P/D disabled)",
        False,
    )
    first = Scheduler(
        load(
            V010_PD.replace(
                "{deciders: {prefill: prefix-based-pd-decider}}", "{stageOrder: prefill_first}"
            )
        )
    )
    result = first.schedule(cycle(), req("hi"), [d, p])
    assert result.endpoint is d and result.headers[PREFILLER_HEADER] == p.name


def test_prefix_scorer_blends_match_length() -> None:
    """matchLengthWeight 0.5, scale 8192, 64-token blocks, 2 of 4 blocks held:
    0.5 x min(1, 128/8192)^2 + 0.5 x 2/4 = 0.2501220703125."""
    cfg = load(
        "plugins:\n- type: prefix-cache-scorer\n  parameters: {matchLengthWeight: 0.5}\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: prefix-cache-scorer}]}]"
    )
    scorer = cfg.plugins["prefix-cache-scorer"]
    producer = cfg.plugins["approx-prefix-cache-producer"]  # the implicit default producer
    a, b = ep(1), ep(2)
    prompt = "q" * (4 * 64 * 4)  # 4 blocks of 64 tokens
    producer.index.add(a.name, token_block_hashes("m", prompt, 64, 99)[:2])
    scores = scorer.score(cycle(), req(prompt), [a, b])
    assert scores == {a.name: 0.2501220703125, b.name: 0.0}


def test_no_hit_lru_spreads_cold_prompts() -> None:
    """Cold: never-used endpoints first (1 - i/(n-1)), then used ones by LRU rank."""
    cfg = load(
        "plugins: [{type: no-hit-lru-scorer}, {type: decode-filter}]\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: no-hit-lru-scorer}]}]"
    )
    lru = cfg.plugins["no-hit-lru-scorer"]
    e0, e1, e2 = ep(1), ep(2), ep(3)
    assert lru.score(cycle(), req("cold"), [e0, e1, e2]) == {
        e0.name: 1.0,
        e1.name: 0.5,
        e2.name: 0.0,
    }
    c = cycle()
    lru.score(c, req("cold"), [e0, e1, e2])
    lru.pre_request(c, req("cold"), Result({"a": ProfileResult(e0)}, "a"))
    assert lru.score(cycle(), req("x"), [e0, e1, e2]) == {e1.name: 1.0, e2.name: 0.5, e0.name: 0.0}


def test_pickers_max_n_and_weighted_distribution() -> None:
    a, b, c = ep(1), ep(2), ep(3)
    two = make("max-score-picker", "m", {"maxNumOfEndpoints": 2})
    assert two.pick_many(cycle(), [(a, 0.1), (b, 0.9), (c, 0.5)]) == [b, c]
    # A-Res keys u^(1/w): one pick is a with chance 3/(3+1) for weights 3 and 1.
    w = make("weighted-random-picker", "w")
    cy = cycle(3)
    n = sum(w.pick(cy, [(a, 3.0), (b, 1.0)]) is a for _ in range(4000))
    assert 0.72 < n / 4000 < 0.78


def test_probabilistic_admitter_and_utilization_detector() -> None:
    adm = make("probabilistic-admitter", "p")
    assert isinstance(adm, ProbabilisticAdmitter)
    # queue 1 of threshold 5: saturation 0.2, chance min(0.2^5 x 300, 1) = 0.096
    assert adm.chance([ep(1, waiting=1)]) == pytest.approx(0.096)
    assert adm.chance([ep(1, waiting=5)]) == 1.0
    cy = cycle(5)
    refused = sum(adm.admit(cy, [ep(1, waiting=1)]) is not None for _ in range(5000))
    assert 0.08 < refused / 5000 < 0.11
    cfg = load(
        "plugins: [{type: utilization-detector, parameters: {queueDepthThreshold: 4}},"
        " {type: random-picker}]\n"
        "flowControl: {saturationDetector: {pluginRef: utilization-detector}}\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: random-picker}]}]"
    )
    # max(2/4, 0.4/0.8) = 0.5 and a stale endpoint 1: mean 0.75 < 1, admitted
    fresh, stale = ep(1, waiting=2, kv=0.4), ep(2)
    stale.metrics.updated = None
    assert cfg.detector.saturation([fresh, stale], 0.1) == 0.75
    assert cfg.shed([fresh, stale], 0.1) is None
    assert cfg.shed([ep(1, waiting=4)], 0.1) == "utilization-detector: pool saturated"


def test_data_parallel_handler_sends_to_the_primary_port() -> None:
    cfg = load(
        "plugins: [{type: data-parallel-profile-handler, parameters: {primaryPort: 8000}},"
        " {type: decode-filter}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: decode-filter}]}]"
    )
    result = Scheduler(cfg).schedule(cycle(), req("hi"), [ep(8002)])
    assert result.endpoint is not None and result.endpoint.name == "10.0.0.1:8000"
    assert result.headers[DATA_PARALLEL_HEADER] == "10.0.0.1:8002"


def check(tmp_path: Path, text: str, *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return subprocess.run(
        [*PDSERVE, "epp", "--config-file", str(path), "--check", *flags],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "plugins: [{type: decode-filter}, {type: queue-scorer, parameters: {foo: 1}}]\n"
            "schedulingProfiles: [{name: a}]",
            "plugins[1].parameters.foo: unknown parameter of queue-scorer",
        ),
        (
            "plugins: [{type: session-affinity-scorer}]\nschedulingProfiles: [{name: a}]",
            "plugins[0].type: session-affinity-scorer is an Alpha plugin; "
            "pass --allow-experimental-plugins to use it",
        ),
        (
            "plugins: [{type: disagg-profile-handler, parameters: {deciders: {prefill: nope}}}]\n"
            "schedulingProfiles: [{name: decode}]",
            "plugins[0].parameters.deciders.prefill: no plugin named 'nope' in plugins",
        ),
        (
            "plugins: []\nflowControl: {saturationDetector: {pluginRef: gone}}\n"
            "schedulingProfiles: [{name: a}]",
            "flowControl.saturationDetector.pluginRef: no plugin named 'gone' in plugins",
        ),
    ],
)
def test_bad_configs_are_one_line_exit_2(tmp_path: Path, text: str, message: str) -> None:
    out = check(tmp_path, text)
    assert out.returncode == 2, out.stdout
    assert out.stderr.strip() == f"pdserve epp: {tmp_path / 'c.yaml'}: {message}"


def test_alpha_plugin_loads_with_the_flag(tmp_path: Path) -> None:
    out = check(
        tmp_path,
        "plugins: [{type: session-affinity-scorer}]\nschedulingProfiles: [{name: a}]",
        "--allow-experimental-plugins",
    )
    assert out.returncode == 0, out.stderr


# Every parameter of the shared configs acts: `--check` lists none as accepted but inert.
SHARED = ("llm-d-router-v0.10/epp-configs", "epp-configs")


@pytest.mark.conformance
@pytest.mark.parametrize(
    "name",
    sorted(f"{d}/{p.name}" for d in SHARED for p in (REFERENCE / d).glob("*.yaml"))
    if REFERENCE.is_dir()
    else [],
)
def test_shared_config_checks_clean(name: str) -> None:
    path = REFERENCE / name
    out = subprocess.run(
        [*PDSERVE, "epp", "--config-file", str(path), "--check", "--allow-experimental-plugins"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("accepted, not acted on:"))
    ignored = [line.strip().split(": ")[0] for line in lines[at + 1 :]]
    assert lines[at] == "accepted, not acted on: none" and ignored == []


def test_no_hit_lru_ranks_in_the_whole_lru_and_records_prefill_by_name() -> None:
    """Upstream's numbers: score = 1 - (never-used count + LRU position) / (n - 1), clamped at
    0, the position counted over every endpoint in the LRU. With e0..e3 used in that order:
    candidates [e2, e3] (n 2) give 1 - 2/1 and 1 - 3/1, both 0; [e0, e3, e4] (e4 never used)
    give e4 1, e0 1 - (1 + 0)/2 = 0.5, e3 1 - (1 + 3)/2 -> 0."""
    cfg = load(
        "plugins: [{type: no-hit-lru-scorer}]\n"
        "schedulingProfiles: [{name: d, plugins: [{pluginRef: no-hit-lru-scorer}]}]"
    )
    lru = cfg.plugins["no-hit-lru-scorer"]
    e = [ep(i) for i in range(5)]

    def cold_pick(profiles: dict[str, Endpoint]) -> None:
        c = cycle()
        lru.score(c, req("cold"), e)
        lru.pre_request(
            c, req("cold"), Result({k: ProfileResult(v) for k, v in profiles.items()}, "d")
        )

    for i in range(4):
        cold_pick({"d": e[i]})
    assert lru.score(cycle(), req("x"), [e[2], e[3]]) == {e[2].name: 0.0, e[3].name: 0.0}
    assert lru.score(cycle(), req("x"), [e[0], e[3], e[4]]) == {
        e[4].name: 1.0,
        e[0].name: 0.5,
        e[3].name: 0.0,
    }
    cold_pick({"d": e[3], "my-prefill": e[0]})  # not named "prefill": e0 stays oldest
    assert list(lru.lru) == [e[0].name, e[1].name, e[2].name, e[3].name]
    cold_pick({"d": e[3], "prefill": e[0]})
    assert list(lru.lru) == [e[1].name, e[2].name, e[3].name, e[0].name]


def test_the_prefix_decider_reads_the_default_producer_as_upstream() -> None:
    """Upstream's prefix-based decider reads the unnamed match-info key (the approximate
    producer's), even when the profile's scorer reads a named precise producer."""
    cfg = load(
        "plugins:\n"
        "- {type: precise-prefix-cache-producer, name: pp}\n"
        "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: pp}}\n"
        "- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 8}}\n"
        "- type: disagg-profile-handler\n"
        "  parameters: {deciders: {prefill: prefix-based-pd-decider}}\n"
        "schedulingProfiles:\n"
        "- {name: decode, plugins: [{pluginRef: prefix-cache-scorer}]}\n"
        "- {name: prefill, plugins: [{pluginRef: prefix-cache-scorer}]}"
    )
    assert cfg.plugins["prefix-cache-scorer"].source is cfg.plugins["pp"]
    assert (
        cfg.plugins["prefix-based-pd-decider"].producer
        is cfg.plugins["approx-prefix-cache-producer"]
    )
