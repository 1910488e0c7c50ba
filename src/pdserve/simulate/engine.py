"""One engine of the fleet: the sim engine's Scheduler and cache, and what /metrics shows.

The gauges are what vLLM's /metrics shows, as the sim engine keeps them: the counts a step
leaves (`StepOutput.left`, shown from its end), and the live state when the engine
goes idle or frees blocks. An EPP scrape copies those: a request that arrived mid-step is
not in the queue the EPP reads, nor, until its first step ends, is one that woke an idle
engine.
"""

from __future__ import annotations

from pdserve.engines.sim.block_manager import BlockManager, CacheEvent
from pdserve.engines.sim.kv_events import encode
from pdserve.engines.sim.scheduler import Scheduler, StepOutput
from pdserve.engines.sim.tokens import Generator
from pdserve.epp.kv_events import as_array
from pdserve.epp.plugins.prefix import PrecisePrefixProducer
from pdserve.epp.types import Endpoint
from pdserve.simulate.fleet import PoolSpec
from pdserve.wire import ROLE_LABEL

PORT = 8000  # every simulated engine listens here; endpoints differ by address (their name)


class SimulatedEngine:
    def __init__(
        self,
        name: str,
        spec: PoolSpec,
        generator: Generator,
        events_to: PrecisePrefixProducer | None = None,
    ) -> None:
        p = spec.profile
        self.name = name
        self.spec = spec
        self.events_to = events_to
        self.events: list[CacheEvent] = []  # KV events since the last flush
        self.blocks = BlockManager(
            p.num_blocks,
            p.block_size,
            self.events.append if events_to is not None else None,
            enable_caching=spec.prefix_caching,
        )
        self.sched = Scheduler(
            p, generator, self.blocks, max_loras=spec.max_loras, scheme=spec.scheme
        )
        self.endpoint = Endpoint(name, PORT, {ROLE_LABEL: spec.role})
        # As the sim engine: a sequence must fit in the KV cache.
        self.max_model_len = min(p.max_model_len, p.num_blocks * p.block_size)
        self.stepping = False  # a step event is queued: arrivals join its next step
        self.pending: StepOutput | None = None  # the step now running, delivered at its end
        self.gauges: tuple[int, int, float] = (0, 0, 0.0)  # running, waiting, kv usage
        self.steps = 0

    def observe(self) -> None:
        self.gauges = self.sched.counts()
        if self.events:
            self._publish()

    def ended(self, out: StepOutput) -> None:
        """The step's end: the counts it left shown, its KV events published."""
        self.gauges = out.left
        if self.events:
            self._publish()

    def _publish(self) -> None:
        """The KV events of the last step, as the sim engine publishes them (one batch
        when it observes) and the EPP's subscriber applies them, by endpoint name."""
        assert self.events_to is not None
        size = self.spec.profile.block_size
        for ev in self.events:
            self.events_to.apply_event(self.endpoint.name, as_array(encode(ev, size)))
        self.events.clear()

    def scrape(self, now: float) -> None:
        m = self.endpoint.metrics
        m.running, m.waiting, m.kv_usage = self.gauges
        m.updated = now
