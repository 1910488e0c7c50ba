"""Endpoints and their metrics: where the I/O of the EPP lives.

Endpoints come from a source behind one small interface (a static list, a JSON file the
local runner rewrites to scale, or an InferencePool's pods in Kubernetes). Each endpoint's
/metrics is scraped on its own schedule, concurrently, so scheduling only ever reads the
last values and never waits on a pod.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiohttp
from prometheus_client.samples import Sample

from pdserve import endpoints, kube, promtext, wire
from pdserve.epp.types import Endpoint, Metrics
from pdserve.errors import UserError
from pdserve.logs import event
from pdserve.pool_pods import KubernetesPods, PoolPods, pod_ip

if TYPE_CHECKING:
    from pdserve.epp.plugins.datalayer import CustomMetric

    CustomMetrics = Callable[[dict[str, str]], Sequence[CustomMetric]]

log = logging.getLogger("pdserve.epp")


class EndpointSource(Protocol):
    def current(self) -> list[Endpoint] | None:
        """The endpoint list if it changed since the last call, else None."""


def parse_endpoints(text: str) -> list[Endpoint]:
    """`ADDR:PORT[@ROLE],...` as given to --endpoints."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        addr, _, role = item.partition("@")
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit():
            raise UserError(f"--endpoints: {item!r} is not ADDR:PORT[@ROLE]")
        labels = {wire.ROLE_LABEL: role} if role else {}
        out.append(Endpoint(host, int(port), labels))
    return out


class StaticSource:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        self._pending: list[Endpoint] | None = endpoints

    def current(self) -> list[Endpoint] | None:
        out, self._pending = self._pending, None
        return out


class FileSource:
    """The endpoints file (pdserve.endpoints), re-read whenever it changes. A version that
    cannot be read is logged once and not re-read until the file changes again (the poll
    comes every 0.25 s); the endpoints stay those of the last good version."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.stamp: tuple[float, int] | None = None

    def current(self) -> list[Endpoint] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime, st.st_size)
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        try:
            entries = endpoints.read(self.path)
        except (OSError, ValueError) as err:
            event(
                log,
                "endpoints_file_unreadable",
                logging.WARNING,
                path=str(self.path),
                error=str(err),
            )
            return None
        return [Endpoint(e.address, e.port, dict(e.labels)) for e in entries]


class PoolSource:
    """An InferencePool's ready pods on the pool's target port, as a PoolPods follower (a
    watch) sees them: a poll reads the follower's state, it does not call the API server."""

    def __init__(self, namespace: str, pool: str, pods: PoolPods | None = None) -> None:
        self.namespace, self.pool = namespace, pool
        self.pods = pods
        self.seen = -1
        self.last: list[tuple[str, int, tuple[tuple[str, str], ...]]] | None = None

    def _follower(self) -> PoolPods:
        # Made on the first poll: the in-cluster config is read once, and a failure to read
        # it is logged by the poll and retried by the next one.
        if self.pods is None:
            self.pods = PoolPods(KubernetesPods(self.namespace, self.pool))
            self.pods.start()
        return self.pods

    def current(self) -> list[Endpoint] | None:
        follower = self._follower()
        follower.synced.wait(kube.API_TIMEOUT)  # polls run in a thread: the first may wait
        version, pods, ports = follower.snapshot()
        if version == self.seen:
            return None
        self.seen = version
        items = [
            (ip, ports[0], dict((p.get("metadata") or {}).get("labels") or {}))
            for p in pods
            if ports and (ip := pod_ip(p)) and kube.pod_ready(p)
        ]
        key = sorted((ip, port, tuple(sorted(labels.items()))) for ip, port, labels in items)
        if key == self.last:
            return None
        self.last = key
        return [Endpoint(ip, port, labels) for ip, port, labels in items]


_WANTED = frozenset(
    {
        wire.METRIC_WAITING,
        wire.METRIC_RUNNING,
        wire.METRIC_KV_USAGE,
        wire.METRIC_KV_USAGE_OLD,
        wire.METRIC_LORA_INFO,
    }
)


def parse_metrics(
    text: str, into: Metrics, now: float, custom: Sequence[CustomMetric] = ()
) -> None:
    """Read the few vLLM gauges the scorers need; a gauge without a usable sample keeps its
    last value. Each custom metric becomes an attribute: of the series its spec matches, the
    first with the latest timestamp, as upstream's getLatestMetric."""
    kv_new = kv_old = None
    lora: Sample | None = None
    names = _WANTED | {c.spec.name for c in custom} if custom else _WANTED
    page: dict[str, list[Sample]] = {}
    for sample in promtext.samples(text, names):
        if sample.name not in _WANTED:
            page.setdefault(sample.name, []).append(sample)
        elif sample.name == wire.METRIC_WAITING:
            into.waiting = int(sample.value)
        elif sample.name == wire.METRIC_RUNNING:
            into.running = int(sample.value)
        elif sample.name == wire.METRIC_KV_USAGE:
            kv_new = sample.value
        elif sample.name == wire.METRIC_KV_USAGE_OLD:
            kv_old = sample.value
        elif lora is None or sample.value >= lora.value:
            lora = sample  # one series per adapter set seen; the newest (its value) is current
    if lora is not None:
        into.loras_running = _adapters(lora, "running_lora_adapters")
        into.loras_waiting = _adapters(lora, "waiting_lora_adapters")
        max_lora = lora.labels.get("max_lora", "")
        into.max_loras = int(max_lora) if max_lora.isdigit() else 0
    into.kv_usage = kv_new if kv_new is not None else (kv_old or 0.0)
    for c in custom:
        _attribute(c, page.get(c.spec.name, []), into.attributes)
    into.updated = now


def _attribute(c: CustomMetric, series: list[Sample], into: dict[str, float]) -> None:
    latest: Sample | None = None
    for s in series:
        if c.spec.matches(s.labels) and (latest is None or _stamp(s) > _stamp(latest)):
            latest = s
    if latest is not None:
        into[c.attribute] = latest.value


def _stamp(s: Sample) -> float:
    """Upstream reads an absent timestamp as 0."""
    return float(s.timestamp) if s.timestamp is not None else 0.0


def _adapters(sample: Sample, label: str) -> frozenset[str]:
    return frozenset(sample.labels.get(label, "").split(",")) - {""}


class SidePoll(Protocol):
    """A data source besides the engine's /metrics (dcgm-data-source): scraped per endpoint
    on its own period, its failures never marking the endpoint down."""

    verify: bool

    def url(self, ep: Endpoint) -> str: ...

    def period(self, base: float) -> float: ...

    def read(self, text: str, into: Metrics) -> None: ...


class Datastore:
    def __init__(
        self,
        source: EndpointSource,
        interval: float = 0.05,
        custom: CustomMetrics | None = None,
        side: Sequence[SidePoll] = (),
        scheme: str = "http",
        verify: bool = True,
    ) -> None:
        """`scheme`, `verify`: --model-server-metrics-scheme, and not its insecure-skip-verify
        (https is checked against the default trust, which SSL_CERT_FILE replaces)."""
        self.source = source
        self.scheme, self.verify = scheme, verify
        self.interval = interval
        # The custom metrics an endpoint's labels call for (core-metrics-extractor).
        self.custom = custom
        self.side = list(side)
        self.endpoints: dict[str, Endpoint] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.http: aiohttp.ClientSession | None = None
        self.source_failures = 0

    def list(self) -> list[Endpoint]:
        return list(self.endpoints.values())

    def refresh(self) -> None:
        """Follow the source once, blocking; for callers without an event loop."""
        self.apply(self.source.current())

    async def poll(self) -> None:
        """Follow the source once, off the event loop (a Kubernetes list can take seconds).
        A failing source keeps the last endpoints and their scrapers: routing goes on while
        the API server is away. A run of failures logs its first error and its end, not a
        line per poll."""
        try:
            new = await asyncio.to_thread(self.source.current)
        except Exception as err:
            self.source_failures += 1
            if self.source_failures == 1:
                error = f"{type(err).__name__}: {err}"
                event(log, "endpoints_source_error", logging.WARNING, error=error)
            return
        if self.source_failures:
            event(log, "endpoints_source_recovered", failures=self.source_failures)
            self.source_failures = 0
        self.apply(new)

    def apply(self, new: Iterable[Endpoint] | None) -> None:
        if new is None:
            return
        wanted = {e.name: e for e in new}
        for name in list(self.endpoints):
            if name not in wanted:
                del self.endpoints[name]
                task = self.tasks.pop(name, None)
                if task:
                    task.cancel()
        for name, ep in wanted.items():
            if name in self.endpoints:
                self.endpoints[name].labels = ep.labels
            else:
                self.endpoints[name] = ep
                if self.http is not None:
                    self.tasks[name] = asyncio.create_task(self._scrapers(ep))
        log.info(
            "endpoints",
            extra={"fields": {"endpoints": {n: e.role for n, e in self.endpoints.items()}}},
        )

    async def run(self) -> None:
        """Follow the source and keep one scraper per endpoint."""
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        for ep in self.endpoints.values():
            self.tasks[ep.name] = asyncio.create_task(self._scrapers(ep))
        try:
            while True:
                await self.poll()
                await asyncio.sleep(0.25)
        finally:
            for task in self.tasks.values():
                task.cancel()
            await self.http.close()

    async def _scrapers(self, ep: Endpoint) -> None:
        """The engine's scraper and any side polls, ended together when the task is."""
        if not self.side:
            await self._scrape(ep)
            return
        await asyncio.gather(self._scrape(ep), *(self._side(poll, ep) for poll in self.side))

    async def _side(self, poll: SidePoll, ep: Endpoint) -> None:
        assert self.http is not None
        url, period = poll.url(ep), poll.period(self.interval)
        while True:
            try:
                async with self.http.get(url, ssl=poll.verify) as resp:
                    if resp.status == 200:
                        poll.read(await resp.text(), ep.metrics)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                pass  # the attribute keeps its last value; the engine's scrape decides health
            await asyncio.sleep(period)

    async def _scrape(self, ep: Endpoint) -> None:
        assert self.http is not None
        url = f"{self.scheme}://{ep.name}/metrics"
        while True:
            error = await self._scrape_once(url, ep)
            _mark(ep, error)
            await asyncio.sleep(self.interval)

    async def _scrape_once(self, url: str, ep: Endpoint) -> str | None:
        """None on success, else why: a failed scrape is the EPP's only sign of a dead
        engine outside Kubernetes (no kubelet marks the pod unready), so it must count."""
        assert self.http is not None
        started = time.monotonic()
        try:
            async with self.http.get(url, ssl=self.verify) as resp:
                if resp.status != 200:
                    return f"metrics answered {resp.status}"
                custom = self.custom(ep.labels) if self.custom is not None else ()
                parse_metrics(await resp.text(), ep.metrics, time.monotonic(), custom)
                ep.metrics.scraped_since(started)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            return f"{type(err).__name__}: {err}"
        return None


def _mark(ep: Endpoint, error: str | None) -> None:
    """Flip the endpoint's readiness on the scrape's outcome; one log line per change."""
    down = error is not None
    if down == ep.metrics.down:
        return
    ep.metrics.down = down
    if down:
        event(log, "endpoint_not_ready", logging.WARNING, endpoint=ep.name, error=error)
    else:
        event(log, "endpoint_ready", endpoint=ep.name)
