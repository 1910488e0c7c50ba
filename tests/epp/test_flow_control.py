"""Flow control: order across and within bands, limits, TTLs and the reason header; the
asyncio gate; the director with the feature gate on."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from pdserve import wire
from pdserve.epp import objectives
from pdserve.epp.config import load
from pdserve.epp.datastore import Datastore, StaticSource
from pdserve.epp.director import Decision, Director
from pdserve.epp.flow_control import Dropped, FlowController, FlowGate, Settings, settings
from pdserve.epp.framework import ConfigError
from pdserve.epp.metrics import EppMetrics
from pdserve.epp.scheduler import Scheduler
from pdserve.epp.types import Endpoint, Metrics
from pdserve.errors import UserError

GATED = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {type: utilization-detector, parameters: {queueDepthThreshold: 2}}
- {type: round-robin-fairness-policy}
- {type: edf-ordering-policy}
- {type: queue-scorer}
flowControl:
  saturationDetector: {pluginRef: utilization-detector}
  defaultRequestTTL: 200ms
  noEndpointRequestTTL: 100ms
  maxRequests: 50
  priorityBands:
  - {priority: 10, maxRequests: 3, fairnessPolicyRef: round-robin-fairness-policy}
  - {priority: 0, maxBytes: 1Ki, orderingPolicyRef: edf-ordering-policy}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
"""


def controller(text: str = GATED) -> FlowController:
    cfg = load(text)
    assert cfg.flow is not None
    return FlowController(cfg.flow)


def offer(ctl: FlowController, rid: str, priority: int, now: float, flow: str = "", size: int = 1):
    item = ctl.item(rid, flow, priority, size, now)
    return item, ctl.offer(item, has_endpoints=True)


def drain(ctl: FlowController) -> list[str]:
    out = []
    while (item := ctl.next()) is not None:
        out.append(item.request_id)
    return out


def test_bands_are_strict_and_each_is_fcfs_by_default() -> None:
    ctl = controller()
    for i, prio in enumerate([0, -5, 10, 0, 7, 10]):
        offer(ctl, f"r{i}-p{prio}", prio, now=float(i))
    assert drain(ctl) == ["r2-p10", "r5-p10", "r4-p7", "r0-p0", "r3-p0", "r1-p-5"]
    assert len(ctl) == 0


def test_round_robin_fairness_alternates_flows_and_global_strict_does_not() -> None:
    ctl = controller()
    for i, flow in enumerate(["a", "a", "b"]):  # band 10 holds 3
        offer(ctl, f"{flow}{i}", 10, float(i), flow)
    assert drain(ctl) == ["a0", "b2", "a1"]
    # Band 0 has no fairness policy given: global strict, one queue across flows by arrival.
    ctl = controller()
    for i, flow in enumerate(["a", "a", "b", "b"]):
        offer(ctl, f"{flow}{i}", 0, float(i), flow)
    assert drain(ctl) == ["a0", "a1", "b2", "b3"]


def test_edf_orders_by_deadline_where_fcfs_orders_by_arrival() -> None:
    for band, first in ((0, "early"), (10, "late")):  # band 0 is EDF, band 10 FCFS
        ctl = controller()
        late = ctl.item("late", "", band, 1, now=1.0)  # deadline 1.2
        early = ctl.item("early", "", band, 1, now=1.1)
        early.ttl = 0.01  # deadline 1.11
        assert ctl.offer(late, True) is None and ctl.offer(early, True) is None
        assert drain(ctl)[0] == first


def test_a_full_band_refuses_at_once_with_the_reason() -> None:
    ctl = controller()
    for i in range(3):
        assert offer(ctl, f"r{i}", 10, 0.0)[1] is None
    drop = offer(ctl, "r3", 10, 0.0)[1]
    assert isinstance(drop, Dropped)
    assert (drop.status, drop.reason) == (429, wire.DROPPED_SATURATED)
    # maxBytes 1Ki on band 0: 1000 bytes fit, 100 more do not.
    assert offer(ctl, "big", 0, 0.0, size=1000)[1] is None
    assert offer(ctl, "more", 0, 0.0, size=100)[1] is not None
    # With no endpoint, a full band is unavailability: 503.
    item = ctl.item("r4", "", 10, 3, 0.0)
    drop = ctl.offer(item, has_endpoints=False)
    assert drop is not None and (drop.status, drop.reason) == (503, wire.DROPPED_NO_ENDPOINTS)


def test_the_global_limit_counts_every_band() -> None:
    text = GATED.replace("maxRequests: 50", "maxRequests: 4")
    ctl = controller(text)
    results = [offer(ctl, f"r{i}", p, 0.0)[1] for i, p in enumerate([10, 0, 0, -1, 3])]
    assert [r is None for r in results] == [True, True, True, True, False]


def test_ttl_expiry_is_429_and_with_no_endpoint_503() -> None:
    ctl = controller()
    offer(ctl, "old", 0, now=0.0)
    offer(ctl, "new", 0, now=0.15)
    assert ctl.expire(0.19, has_endpoints=True) == []
    expired = ctl.expire(0.2, has_endpoints=True)
    assert [(i.request_id, d.status, d.reason) for i, d in expired] == [
        ("old", 429, wire.DROPPED_TTL_EXPIRED)
    ]
    # The empty pool's budget (100 ms) applies while there is no endpoint.
    expired = ctl.expire(0.26, has_endpoints=False)
    assert [(i.request_id, d.status, d.reason) for i, d in expired] == [
        ("new", 503, wire.DROPPED_NO_ENDPOINTS)
    ]
    assert len(ctl) == 0 and ctl.next() is None


def test_a_cancelled_request_frees_its_place() -> None:
    ctl = controller()
    items = [offer(ctl, f"r{i}", 10, 0.0)[0] for i in range(3)]
    ctl.cancel(items[1])
    assert offer(ctl, "r3", 10, 0.0)[1] is None
    assert drain(ctl) == ["r0", "r2", "r3"]


def test_unconfigured_priorities_get_bands_from_the_templates() -> None:
    text = GATED.replace(
        "  priorityBands:",
        "  defaultPriorityBand: {maxRequests: 1}\n"
        "  defaultNegativePriorityBand: {maxRequests: 2}\n  priorityBands:",
    )
    ctl = controller(text)
    assert [offer(ctl, f"p{i}", 5, 0.0)[1] is None for i in range(2)] == [True, False]
    assert [offer(ctl, f"n{i}", -3, 0.0)[1] is None for i in range(3)] == [True, True, False]
    plain = FlowController(Settings())
    assert plain.settings.band(4).max_requests == 5000
    assert plain.settings.band(4).max_bytes == 1_000_000_000


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("maxBytes: 1Ki", "maxBytes: lots"), "flowControl.priorityBands[1].maxBytes: 'lots'"),
        (("priority: 0,", "priority: 10,"), "flowControl.priorityBands[1].priority: 10 is"),
        (("defaultRequestTTL: 200ms", "defaultRequestTTL: soon"), "defaultRequestTTL"),
    ],
)
def test_bad_flow_control_settings_are_one_line(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(GATED.replace(*edit))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_without_the_gate_flow_control_is_reported_ignored() -> None:
    cfg = load(GATED.replace("featureGates: [flowControl]\n", ""))
    assert cfg.flow is None
    ignored = cfg.ignored()
    assert "flowControl.priorityBands: ignored, the flowControl feature gate is off" in ignored
    assert not [line for line in ignored if "saturationDetector" in line]
    assert load(GATED).ignored() == []
    # A map of gates works as a list does.
    assert load(GATED.replace("[flowControl]", "{flowControl: true}")).flow is not None
    assert settings(None, {}).ttl == 60.0


# --- the asyncio gate --------------------------------------------------------------------


async def test_the_gate_holds_while_saturated_and_serves_high_bands_first() -> None:
    full = {"on": True}
    gate = FlowGate(controller(), lambda now: float(full["on"]), lambda: True, tick=0.001)
    order: list[str] = []

    async def ask(rid: str, priority: int) -> None:
        await gate.admit(rid, "", priority, 1)
        order.append(rid)

    tasks = [asyncio.create_task(ask(f"r{p}", p)) for p in (0, -1, 10, 0)]
    await asyncio.sleep(0.02)  # let them all queue; a saturated pool dispatches nothing
    assert order == [] and len(gate.controller) == 4
    full["on"] = False
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert order == ["r10", "r0", "r0", "r-1"]


async def test_a_waiting_request_expires_with_429_and_cancelling_removes_it() -> None:
    gate = FlowGate(controller(), lambda now: 1.0, lambda: True, tick=0.001)
    t0 = time.monotonic()
    with pytest.raises(Dropped) as err:
        await gate.admit("r", "", 0, 1)
    assert err.value.reason == wire.DROPPED_TTL_EXPIRED and time.monotonic() - t0 < 1.0
    waiter = asyncio.create_task(gate.admit("gone", "", 0, 1))
    await asyncio.sleep(0.01)
    assert len(gate.controller) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(gate.controller) == 0


async def test_an_unsaturated_pool_with_an_empty_queue_costs_no_wait() -> None:
    gate = FlowGate(controller(), lambda now: 0.0, lambda: True)
    assert await gate.admit("r", "", 0, 1) == 0.0
    assert gate._pump is None  # no task was needed


# --- the director with the gate on --------------------------------------------------------


def director(waiting: int, text: str = GATED) -> Director:
    pod = Endpoint("10.0.0.1", 8000, {wire.ROLE_LABEL: wire.ROLE_DECODE})
    pod.metrics = Metrics(waiting=waiting, updated=time.monotonic())
    store = Datastore(StaticSource([pod]))
    store.refresh()
    return Director(Scheduler(load(text)), store, EppMetrics(), inference_objectives={"vip": 10})


BODY = json.dumps({"model": "m", "prompt": "hi"}).encode()


async def test_the_director_queues_then_drops_with_the_reason() -> None:
    d = director(waiting=5)  # 5 / queueDepthThreshold 2: saturated
    with pytest.raises(Decision) as err:
        await d.route({}, BODY)
    assert (err.value.status, err.value.reason) == (429, wire.DROPPED_TTL_EXPIRED)
    d = director(waiting=0)
    result, _ = await d.route({}, BODY)
    assert result.endpoint is not None
    # Counted against the pod until the next scrape: two dispatches reach threshold 2.
    await d.route({}, BODY)
    assert result.endpoint.metrics.dispatched == 2 and d._saturation(time.monotonic()) >= 1


async def test_the_decision_deadline_answers_a_queued_request_before_its_ttl(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Queued past the EPP's own deadline (the TTL is longer): a 429 as an expired TTL, in
    the engines' error shape with a Retry-After, one log line under the request id, and
    the queue is left empty."""
    from pdserve.epp.extproc import ExtProc

    d = director(
        waiting=5, text=GATED.replace("defaultRequestTTL: 200ms", "defaultRequestTTL: 30s")
    )
    d.deadline = 0.1
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="pdserve.epp"):
        out = await ExtProc(d)._answer({"x-request-id": "late-1"}, BODY, "body")
    assert time.monotonic() - t0 < 5
    answer = out.immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
    assert answer.status.code == 429 and headers["retry-after"] == "1"
    assert headers[wire.DROPPED_HEADER] == wire.DROPPED_TTL_EXPIRED
    error = json.loads(answer.body)["error"]
    assert error["code"] == 429 and "within 0.1s" in error["message"]
    [line] = [r for r in caplog.records if r.getMessage() == "decision_deadline"]
    assert line.fields["request_id"] == "late-1" and line.fields["status"] == 429
    assert d.gate is not None and len(d.gate.controller) == 0 and "late-1" not in d.live


async def test_an_objective_header_picks_the_band() -> None:
    d = director(waiting=5)
    vip = asyncio.create_task(d.route({wire.OBJECTIVE_HEADERS[0]: "vip"}, BODY))
    plain = asyncio.create_task(d.route({}, BODY))
    await asyncio.sleep(0.02)
    assert d.gate is not None and d.gate.controller.depth() == {10: 1, 0: 1}
    for task in (vip, plain):
        task.cancel()
    await asyncio.gather(vip, plain, return_exceptions=True)


def test_inference_objectives_parse_and_filter_by_pool(tmp_path: Path) -> None:
    text = """
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: premium}
spec: {priority: 100, poolRef: {name: pool-a}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -10, poolRef: {name: pool-a}}
---
apiVersion: llm-d.ai/v1alpha2
kind: InferenceObjective
metadata: {name: other}
spec: {priority: 5, poolRef: {name: pool-b}}
"""
    assert objectives.parse(text, "f", "pool-a") == {"premium": 100, "batch": -10}
    assert len(objectives.parse(text, "f")) == 3
    with pytest.raises(UserError, match=r"^f: document 1 \(x\): spec.priority must be"):
        objectives.parse(
            "apiVersion: llm-d.ai/v1alpha2\nkind: InferenceObjective\nmetadata: {name: x}\n"
            "spec: {priority: high, poolRef: {name: p}}",
            "f",
        )
    assert objectives.fairness_id({"x-gateway-inference-fairness-id": "tenant"}) == "tenant"


async def test_an_empty_pool_is_a_503_with_the_reason_header_in_envoys_answer() -> None:
    from pdserve.epp.extproc import ExtProc

    store = Datastore(StaticSource([]))
    store.refresh()
    ext = ExtProc(Director(Scheduler(load(GATED)), store, EppMetrics()))
    out = await ext._answer({":method": "POST"}, BODY, "body")
    answer = out.immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
    assert answer.status.code == 503
    assert headers[wire.DROPPED_HEADER] == wire.DROPPED_NO_ENDPOINTS
    assert json.loads(answer.body)["error"]["code"] == 503
    # A TTL expiry: 429, the reason and a Retry-After.
    ext = ExtProc(director(waiting=5))
    answer = (await ext._answer({":method": "POST"}, BODY, "body")).immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
    assert answer.status.code == 429 and headers["retry-after"] == "1"
    assert headers[wire.DROPPED_HEADER] == wire.DROPPED_TTL_EXPIRED


def test_a_scrape_shows_the_requests_sent_well_before_it() -> None:
    m = Metrics(sent=[1.0, 1.99, 2.5])
    m.scraped_since(2.0)  # begun at 2.0: 1.0 is in it, 1.99 may still be on its way
    assert m.sent == [1.99, 2.5] and m.dispatched == 2


HOLDBACK = GATED.replace(
    "- {type: queue-scorer}\n",
    "- {type: queue-scorer}\n"
    "- {type: priority-holdback-policy, parameters: {minCeiling: 0.4, maxCeiling: 0.9}}\n",
).replace(
    "  maxRequests: 50\n",
    "  maxRequests: 50\n  usageLimitPolicyPluginRef: priority-holdback-policy\n",
)


def test_priority_holdback_gates_low_priorities_first() -> None:
    """rank domain over the active priorities (the configured bands 10 and 0, and -1 once
    it has been seen): ceilings 0.9, 0.65, 0.4."""
    ctl = controller(HOLDBACK)
    for rid, prio in (("hi", 10), ("mid", 0), ("lo", -1)):
        offer(ctl, rid, prio, 0.0)
    assert ctl.ceilings(0.5) == pytest.approx({10: 0.9, 0: 0.65, -1: 0.4})
    assert ctl.next(0.95) is None  # past every ceiling
    assert [ctl.next(0.7).request_id, ctl.next(0.7)] == ["hi", None]  # type: ignore[union-attr]
    assert [ctl.next(0.5).request_id, ctl.next(0.5)] == ["mid", None]  # type: ignore[union-attr]
    assert ctl.next(0.3).request_id == "lo"  # type: ignore[union-attr]


async def test_with_holdback_a_low_priority_waits_while_a_high_one_goes_at_once() -> None:
    ctl = controller(HOLDBACK)
    ctl.ceiling(-1, 0.0)  # band -1 has been seen
    gate = FlowGate(ctl, lambda now: 0.5, lambda: True, tick=0.001)
    assert await gate.admit("hi", "", 10, 1) == 0.0
    low = asyncio.create_task(gate.admit("lo", "", -1, 1))
    await asyncio.sleep(0.02)
    assert not low.done() and ctl.depth()[-1] == 1
    with pytest.raises(Dropped):  # its TTL (200 ms) runs out while 0.5 stays over 0.4
        await asyncio.wait_for(low, 2)


@pytest.mark.parametrize(
    ("params", "ceilings"),
    [
        ("{domain: value, minCeiling: 0.2}", {10: 1.0, 0: 0.2 + 0.8 / 11, -1: 0.2}),
        ("{domain: explicit, ceilings: {10: 0.9, 0: 0.5}}", {10: 0.9, 0: 0.5, -1: 0.0}),
    ],
)
def test_holdback_domains(params: str, ceilings: dict[int, float]) -> None:
    ctl = controller(HOLDBACK.replace("{minCeiling: 0.4, maxCeiling: 0.9}", params))
    for rid, prio in (("hi", 10), ("mid", 0), ("lo", -1)):
        offer(ctl, rid, prio, 0.0)
    assert ctl.ceilings(0.5) == pytest.approx(ceilings)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{domain: rank}", "parameters.minCeiling: required with domain rank"),
        ("{domain: explicit}", "parameters.ceilings: required with domain explicit"),
        ("{domain: explicit, minCeiling: 0.1, ceilings: {1: 0.5}}", "minCeiling: not allowed"),
        ("{domain: explicit, ceilings: {1: 0.2, 0: 0.5}}", "must not rise as priority falls"),
        ("{minCeiling: 0.8, maxCeiling: 0.5}", "minCeiling: must not exceed maxCeiling"),
    ],
)
def test_bad_holdback_parameters_are_one_line(params: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(HOLDBACK.replace("{minCeiling: 0.4, maxCeiling: 0.9}", params))


def test_a_static_limit_gates_every_band_at_its_threshold() -> None:
    text = HOLDBACK.replace(
        "priority-holdback-policy, parameters: {minCeiling: 0.4, maxCeiling: 0.9}",
        "static-usage-limit-policy, parameters: {threshold: 0.5}",
    ).replace(
        "usageLimitPolicyPluginRef: priority-holdback-policy",
        "usageLimitPolicyPluginRef: static-usage-limit-policy",
    )
    ctl = controller(text)
    offer(ctl, "a", 0, 0.0)
    assert ctl.next(0.5) is None and ctl.next(0.49) is not None
