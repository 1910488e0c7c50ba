"""Flow control: while the pool is saturated, requests wait in the EPP by priority band
instead of piling into engine queues; they leave by dispatch, TTL expiry or a full band.

The semantics are llm-d-router's (v0.9+, `featureGates: [flowControl]`):
- Bands are strict: a request of a higher priority always dispatches before a lower one.
  Within a band the fairness policy picks a flow (the fairness id header) and the ordering
  policy picks the flow's request (FCFS, EDF).
- Dispatch waits while the saturation detector says the pool is full; each dispatch is
  counted against its endpoint until the next scrape, so one scrape's view cannot overshoot.
- A full band (or the global limit) refuses at once: 429 `rejected-saturated`, or 503
  `rejected-no-endpoints` when the pool is empty. A request past its TTL is a 429
  `rejected-ttl-expired`; with no endpoint the `noEndpointRequestTTL` budget applies and its
  expiry is a 503 `rejected-no-endpoints`.

`FlowController` is the pure core (no clock, no I/O: the simulator can drive it in virtual
time); `FlowGate` runs it on asyncio for the ext_proc server.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pdserve import wire
from pdserve.epp.config import FlowControl, PriorityBand
from pdserve.epp.framework import ConfigError, Plugin, go_duration, make
from pdserve.epp.plugins.flowcontrol import FairnessPolicy, OrderingPolicy, UsageLimitPolicy

DEFAULT_TTL = 60.0
BAND_MAX_REQUESTS = 5000
BAND_MAX_BYTES = 1_000_000_000
TICK = 0.005  # how often a waiting queue re-reads saturation between wake-ups


class Dropped(Exception):
    """A request flow control will not dispatch: the status, and the reason header value."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def saturated_drop(band: int) -> Dropped:
    return Dropped(429, wire.DROPPED_SATURATED, f"priority band {band} is full")


def no_endpoint_drop() -> Dropped:
    return Dropped(503, wire.DROPPED_NO_ENDPOINTS, "no endpoint available for this request")


@dataclass(eq=False)
class Item:
    request_id: str
    flow: str
    priority: int
    size: int  # request bytes, for maxBytes
    enqueued: float
    ttl: float
    no_endpoint_ttl: float
    seq: int = 0
    done: bool = False
    ticket: Any = None  # the FlowGate's future

    @property
    def deadline(self) -> float:
        return self.enqueued + self.ttl


@dataclass
class BandSettings:
    priority: int
    max_requests: int
    max_bytes: int
    fairness: FairnessPolicy
    ordering: OrderingPolicy


class Band:
    """One priority level's flows, each a heap by the band's ordering key."""

    def __init__(self, settings: BandSettings) -> None:
        self.settings = settings
        self.flows: dict[str, list[tuple[tuple[float, int], Item]]] = {}
        self.count = 0
        self.bytes = 0
        self.last: str | None = None

    def room(self, item: Item) -> bool:
        s = self.settings
        if s.max_requests and self.count + 1 > s.max_requests:
            return False
        return not (s.max_bytes and self.bytes + item.size > s.max_bytes)

    def push(self, item: Item) -> None:
        key = self.settings.ordering.key(item)
        heapq.heappush(self.flows.setdefault(item.flow, []), (key, item))
        self.count += 1
        self.bytes += item.size

    def pop(self) -> Item | None:
        heads = {}
        for flow, heap in list(self.flows.items()):
            while heap and heap[0][1].done:
                heapq.heappop(heap)
            if heap:
                heads[flow] = heap[0][0]
            else:
                del self.flows[flow]
        if not heads:
            return None
        flow = self.settings.fairness.pick(heads, self.last)
        self.last = flow
        item = heapq.heappop(self.flows[flow])[1]
        self.release(item)
        return item

    def release(self, item: Item) -> None:
        """The item leaves the band (dispatched, expired, cancelled): heaps drop it lazily."""
        item.done = True
        self.count -= 1
        self.bytes -= item.size


@dataclass
class Settings:
    """flowControl of an EndpointPickerConfig, with upstream's defaults filled in."""

    ttl: float = DEFAULT_TTL
    no_endpoint_ttl: float = DEFAULT_TTL
    max_requests: int = 0  # 0: no global limit
    max_bytes: int = 0
    bands: dict[int, BandSettings] = field(default_factory=dict)
    default: PriorityBand | None = None
    default_negative: PriorityBand | None = None
    policies: dict[str, Plugin] = field(default_factory=dict)
    usage_limit: UsageLimitPolicy | None = None  # None: static, ceiling 1.0 for all

    def band(self, priority: int) -> BandSettings:
        """A configured band, else one made from the default (or negative default) template,
        as upstream provisions bands for priorities nobody configured."""
        if priority not in self.bands:
            template = self.default
            if priority < 0 and self.default_negative is not None:
                template = self.default_negative
            self.bands[priority] = _band(template, priority, self.policies, "flowControl")
        return self.bands[priority]


def settings(fc: FlowControl | None, plugins: dict[str, Plugin]) -> Settings:
    """Settings from the config's section; its references were checked by the loader."""
    plugins = dict(plugins)  # the default policies made here stay out of the config's list
    if fc is None:
        return Settings(policies=plugins)
    ttl = _duration(fc.defaultRequestTTL, DEFAULT_TTL, "flowControl.defaultRequestTTL")
    out = Settings(
        ttl=ttl,
        no_endpoint_ttl=_duration(fc.noEndpointRequestTTL, ttl, "flowControl.noEndpointRequestTTL"),
        max_requests=_count(fc.maxRequests, 0, "flowControl.maxRequests"),
        max_bytes=_bytes(fc.maxBytes, 0, "flowControl.maxBytes"),
        default=fc.defaultPriorityBand,
        default_negative=fc.defaultNegativePriorityBand,
        policies=plugins,
    )
    limit = plugins.get(fc.usageLimitPolicyPluginRef) if fc.usageLimitPolicyPluginRef else None
    out.usage_limit = limit if isinstance(limit, UsageLimitPolicy) else None
    for i, band in enumerate(fc.priorityBands):
        at = f"flowControl.priorityBands[{i}]"
        if band.priority is None:
            raise ConfigError(f"{at}.priority: required")
        if band.priority in out.bands:
            raise ConfigError(f"{at}.priority: {band.priority} is configured twice")
        out.bands[band.priority] = _band(band, band.priority, plugins, at)
    return out


def _band(
    spec: PriorityBand | None, priority: int, plugins: dict[str, Plugin], at: str
) -> BandSettings:
    fairness = plugins.get(spec.fairnessPolicyRef) if spec and spec.fairnessPolicyRef else None
    ordering = plugins.get(spec.orderingPolicyRef) if spec and spec.orderingPolicyRef else None
    fair = fairness if isinstance(fairness, FairnessPolicy) else _policy(plugins, "global-strict")
    order = ordering if isinstance(ordering, OrderingPolicy) else _policy(plugins, "fcfs")
    assert isinstance(fair, FairnessPolicy) and isinstance(order, OrderingPolicy)
    return BandSettings(
        priority=priority,
        max_requests=_count(spec.maxRequests if spec else None, BAND_MAX_REQUESTS, at),
        max_bytes=_bytes(spec.maxBytes if spec else None, BAND_MAX_BYTES, at),
        fairness=fair,
        ordering=order,
    )


def _policy(plugins: dict[str, Plugin], kind: str) -> Plugin:
    """The default policy instance (one per config, shared by bands), made on first use."""
    name = {"global-strict": "global-strict-fairness-policy", "fcfs": "fcfs-ordering-policy"}[kind]
    key = f"__default_{name}"
    if key not in plugins:
        plugins[key] = make(name, name)
    return plugins[key]


def _duration(text: str | None, default: float, at: str) -> float:
    return default if text is None else go_duration(text, at)


def _count(value: int | str | None, default: int, at: str) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{at}.maxRequests: {value!r} is not a whole number") from None
    if n < 0:
        raise ConfigError(f"{at}.maxRequests: must be >= 0, got {n}")
    return n


_QUANTITY = re.compile(r"(\d+)(Ki|Mi|Gi|Ti|k|K|M|G|T)?")
_SCALE = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _bytes(value: int | str | None, default: int, at: str) -> int:
    """A byte count: an integer or a Kubernetes quantity such as 512Mi or 1G."""
    if value is None:
        return default
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{at}.maxBytes: must be >= 0, got {value}")
        return value
    m = _QUANTITY.fullmatch(value.strip())
    if m is None:
        raise ConfigError(f"{at}.maxBytes: {value!r} is not a byte count such as 512Mi")
    return int(m.group(1)) * _SCALE[m.group(2)]


class FlowController:
    """The queues and their limits. Every method takes the time it is told."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The configured bands and band 0 exist from the start, as upstream provisions them;
        # others appear with their first request. All count as active for the usage limit.
        self.bands: dict[int, Band] = {
            p: Band(settings.band(p)) for p in sorted({0, *settings.bands}, reverse=True)
        }
        self.count = 0
        self.bytes = 0
        self._seq = itertools.count()
        self._ttl: list[tuple[float, int, Item]] = []
        self._no_endpoint: list[tuple[float, int, Item]] = []

    def __len__(self) -> int:
        return self.count

    def item(self, request_id: str, flow: str, priority: int, size: int, now: float) -> Item:
        s = self.settings
        return Item(request_id, flow, priority, size, now, s.ttl, s.no_endpoint_ttl)

    def offer(self, item: Item, has_endpoints: bool) -> Dropped | None:
        """Queue the item, or say why not (a full band or global limit)."""
        band = self.bands.get(item.priority)
        if band is None:
            band = self.bands[item.priority] = Band(self.settings.band(item.priority))
        s = self.settings
        full = (s.max_requests and self.count + 1 > s.max_requests) or (
            s.max_bytes and self.bytes + item.size > s.max_bytes
        )
        if full or not band.room(item):
            return saturated_drop(item.priority) if has_endpoints else no_endpoint_drop()
        item.seq = next(self._seq)
        band.push(item)
        self.count += 1
        self.bytes += item.size
        heapq.heappush(self._ttl, (item.deadline, item.seq, item))
        heapq.heappush(self._no_endpoint, (item.enqueued + item.no_endpoint_ttl, item.seq, item))
        return None

    def waiting(self) -> list[int]:
        """The priorities with requests waiting, highest first."""
        return sorted((p for p, b in self.bands.items() if b.count), reverse=True)

    def ceilings(self, saturation: float) -> dict[int, float]:
        """Each active priority's admission ceiling under the usage limit policy."""
        active = sorted(self.bands, reverse=True)
        policy = self.settings.usage_limit
        if policy is None:
            return dict.fromkeys(active, 1.0)
        return dict(zip(active, policy.ceilings(saturation, active), strict=True))

    def ceiling(self, priority: int, saturation: float) -> float:
        if priority not in self.bands:
            self.bands[priority] = Band(self.settings.band(priority))
        return self.ceilings(saturation)[priority]

    def next(self, saturation: float = 0.0) -> Item | None:
        """The request to dispatch at this saturation: the highest waiting band's, by its
        fairness and ordering, if the saturation is below that band's ceiling. A band held
        back holds back those below it too: bands are strict."""
        waiting = self.waiting()
        if not waiting:
            return None
        top = waiting[0]
        if saturation >= self.ceilings(saturation)[top]:
            return None
        item = self.bands[top].pop()
        if item is not None:
            self._left(item)
        return item

    def expire(self, now: float, has_endpoints: bool) -> list[tuple[Item, Dropped]]:
        """Requests whose wait budget ran out: the TTL, or with no endpoint its own budget."""
        heap = self._ttl if has_endpoints else self._no_endpoint
        out = []
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if item.done:
                continue
            self.cancel(item)
            if has_endpoints:
                drop = Dropped(
                    429,
                    wire.DROPPED_TTL_EXPIRED,
                    f"waited {now - item.enqueued:.1f}s in priority band {item.priority}, "
                    "past its TTL",
                )
            else:
                drop = no_endpoint_drop()
            out.append((item, drop))
        return out

    def cancel(self, item: Item) -> None:
        if not item.done:
            self.bands[item.priority].release(item)
            self._left(item)

    def _left(self, item: Item) -> None:
        self.count -= 1
        self.bytes -= item.size

    def depth(self) -> dict[int, int]:
        return {p: b.count for p, b in self.bands.items()}


class FlowGate:
    """FlowController on asyncio: `admit` returns once the request may be scheduled (the
    seconds it waited) or raises Dropped. One pump task dispatches while anything waits;
    a waiting request costs no CPU and never blocks the event loop or another band."""

    def __init__(
        self,
        controller: FlowController,
        saturation: Callable[[float], float],
        has_endpoints: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        tick: float = TICK,
    ) -> None:
        self.controller = controller
        self.saturation, self.has_endpoints, self.clock, self.tick = (
            saturation,
            has_endpoints,
            clock,
            tick,
        )
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def admit(self, request_id: str, flow: str, priority: int, size: int) -> float:
        now = self.clock()
        ctl = self.controller
        if not len(ctl) and self.has_endpoints() and self._room(priority, now):
            return 0.0
        item = ctl.item(request_id, flow, priority, size, now)
        drop = ctl.offer(item, self.has_endpoints())
        if drop is not None:
            raise drop
        item.ticket = asyncio.get_running_loop().create_future()
        self._start()
        try:
            waited: float = await item.ticket
            return waited
        except asyncio.CancelledError:
            ctl.cancel(item)  # the client went away while it waited
            raise

    def _room(self, priority: int, now: float) -> bool:
        """Nothing waits: may a request of this priority go at once?"""
        saturation = self.saturation(now)
        return saturation < self.controller.ceiling(priority, saturation)

    def _start(self) -> None:
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._run())

    def poke(self) -> None:
        """Something changed (a scrape, an endpoint): re-check without waiting for the tick."""
        self._wake.set()

    async def _run(self) -> None:
        ctl = self.controller
        while len(ctl):
            now = self.clock()
            has = self.has_endpoints()
            for item, drop in ctl.expire(now, has):
                _settle(item, drop)
            turn = ctl.next(self.saturation(now)) if has and len(ctl) else None
            if turn is not None:
                _settle(turn, now - turn.enqueued)
                # Let the dispatched request be scheduled (and counted on its endpoint)
                # before saturation is read again.
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)


def _settle(item: Item, outcome: float | Dropped) -> None:
    fut = item.ticket
    if fut is None or fut.done():
        return
    if isinstance(outcome, Dropped):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
