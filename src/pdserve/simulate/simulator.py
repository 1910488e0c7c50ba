"""The discrete-event loop: arrivals routed by the EPP's scheduling core, engines stepped by
the sim engine's scheduler, KV pulled over a modelled link, metrics scraped on a period.

Each engine runs as the sim engine's loop does on a real clock: `step(now)` mutates the
batch at once and says how long the iteration takes; its tokens are delivered, the gauges it
left shown and the next step begun when that time has passed. A P/D request goes where the
EPP's prefill header says (the sidecar's contract): the prefill leg with remote_decode, then,
when it finishes, the decode leg with remote_prefill, whose pull starts when the decode
engine admits it and whose end frees the producer's lease.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pdserve.bench.client import Result
from pdserve.bench.generator import PlannedRequest, requests
from pdserve.bench.workload import Workload
from pdserve.engines.sim.scheduler import Phase, Request
from pdserve.engines.sim.tokens import Generator
from pdserve.epp.scheduler import Scheduler as EppScheduler
from pdserve.epp.types import Cycle
from pdserve.simulate.ahead import Arrival, Preparer, arrivals
from pdserve.simulate.engine import SimulatedEngine
from pdserve.simulate.events import ARRIVAL, KV_PULLED, SCRAPE, STEP, EventQueue
from pdserve.simulate.fleet import Fleet
from pdserve.simulate.flight import Flight
from pdserve.simulate.link import Link
from pdserve.simulate.traffic import Traffic
from pdserve.wire import PREFILLER_HEADER, ROLE_BOTH

# Progress is checked every this many events: a clock read per event would cost more than
# the events themselves.
PROGRESS_EVERY = 1 << 13


@dataclass(frozen=True)
class Options:
    seed: int = 0
    duration: float | None = None  # seconds of arrivals, as bench's --duration
    max_requests: int | None = None  # or this many arrivals
    scrape_interval: float = 0.05  # the EPP's --refresh-metrics-interval default
    timeout: float = 300.0  # bench's per-request --timeout: a later finish counts as one
    ahead: bool = False  # make arrivals in a worker process (simulate/ahead.py)


@dataclass
class Counts:
    """What the progress line shows."""

    now: float = 0.0
    arrived: int = 0
    done: int = 0
    live: int = 0


Progress = Callable[[Counts], None]
Made = tuple[list[bytes] | None, int | None]  # a request's prompt block hashes and key


def _name(role: str, index: int) -> str:
    """As `up` names engines: prefill-0, decode-0, or engine-0 in an aggregated fleet."""
    return f"{'engine' if role == ROLE_BOTH else role}-{index}"


@contextlib.contextmanager
def _few_collections() -> Iterator[None]:
    """A run allocates millions of small objects that mostly live until its end (results,
    their gaps): at the default thresholds the collector walks all of them again and again.
    Objects from before the run are frozen out of its walks too."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


class Simulation:
    def __init__(self, fleet: Fleet, workload: Workload, options: Options, link: Link) -> None:
        self.options, self.link = options, link
        self.gen = Generator(fleet.tokenizer)
        self.engines = [
            SimulatedEngine(_name(s.role, i), s, self.gen, fleet.events_to)
            for s in fleet.pools
            for i in range(s.replicas)
        ]
        self.by_name = {e.endpoint.name: i for i, e in enumerate(self.engines)}
        self.endpoints = [e.endpoint for e in self.engines]
        self.epp = EppScheduler(fleet.epp)
        self.rng = random.Random(f"pdserve-simulate:{options.seed}")
        self.traffic = Traffic(fleet.tokenizer, fleet.plan.served_name, workload.ignore_eos)
        self.ignore_eos = workload.ignore_eos
        plan: Iterator[PlannedRequest] = requests(workload, options.seed, options.duration)
        if options.max_requests is not None:
            plan = itertools.islice(plan, options.max_requests)
        self.plan = plan
        first = self.engines[0].sched
        size = first.profile.block_size
        self.prepare = Preparer(self.traffic, first.scheme, size)
        self.alike = [
            e.sched.scheme == first.scheme and e.sched.profile.block_size == size
            for e in self.engines
        ]
        self.arrivals: Iterator[Arrival] = iter(())
        self.queue = EventQueue()
        self.flights: dict[str, Flight] = {}  # by the engine request id now carrying it
        self.results: list[Result] = []
        self.counts = Counts()
        self.exhausted = False
        self.pulls = 0  # KV pulls in progress

    # --- the loop -----------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> tuple[list[Result], float]:
        """The results in completion order and the virtual seconds until the last one."""
        self.arrivals = arrivals(self.plan, self.prepare, self.options.ahead)
        try:
            with _few_collections():
                return self._run(progress)
        finally:
            close = getattr(self.arrivals, "close", None)
            if close is not None:
                close()  # stops a worker that is still making arrivals

    def _run(self, progress: Progress | None) -> tuple[list[Result], float]:
        n = len(self.engines)
        for i, engine in enumerate(self.engines):  # scrapers start spread over one period
            self.queue.push(self.options.scrape_interval * i / n, SCRAPE, engine)
        self._next_arrival()
        heap_pop, counts = self.queue.pop, self.counts
        events = 0
        last = time.perf_counter()
        while not (self.exhausted and counts.live == 0):
            now, _, kind, subject = heap_pop()
            if kind == STEP:
                self._step(subject, now)
            elif kind == ARRIVAL:
                self._arrive(subject, now)
            elif kind == KV_PULLED:
                self._pulled(subject, now)
            else:
                self._scrape(subject, now)
            events += 1
            if (
                progress is not None
                and not events % PROGRESS_EVERY
                and time.perf_counter() - last >= 1.0
            ):
                last = time.perf_counter()
                counts.now = now
                progress(counts)
        return self.results, counts.now

    def _next_arrival(self) -> None:
        arrival = next(self.arrivals, None)
        if arrival is None:
            self.exhausted = True
        else:
            self.queue.push(arrival.planned.at, ARRIVAL, arrival)

    # --- routing ------------------------------------------------------------------------
    def _arrive(self, arrival: Arrival, now: float) -> None:
        self._next_arrival()
        counts = self.counts
        counts.arrived += 1
        counts.live += 1
        planned = arrival.planned
        inputs = self.traffic.inputs(planned, arrival.tokens)
        decided = self.epp.schedule(Cycle(now=now, rng=self.rng), inputs.routed, self.endpoints)
        if decided.endpoint is None:
            self._failed(planned, now, "http_503")  # the EPP's "no endpoint available"
            return
        d = self.by_name[decided.endpoint.name]
        tokens, limit = inputs.tokens, self.engines[d].max_model_len
        if not tokens or len(tokens) >= limit or len(tokens) + (inputs.max_tokens or 0) > limit:
            self._failed(planned, now, "http_400")  # the engine's context-length refusal
            return
        decode = Request(
            id=f"d{planned.index}",
            prompt=tokens,
            max_tokens=inputs.max_tokens or (limit - len(tokens)),
            arrival=now,
            ignore_eos=self.ignore_eos,
        )
        flight = Flight(planned, decode, decode_engine=d)
        prefiller = decided.headers.get(PREFILLER_HEADER)
        if prefiller is None:
            self._submit(d, decode, flight, now, *self._made(d, decode, arrival))
            return
        leg = Request(
            id=f"p{planned.index}",
            prompt=tokens,
            max_tokens=1,
            arrival=now,
            ignore_eos=self.ignore_eos,
            remote_decode=True,
        )
        p = flight.prefill_engine = self.by_name[prefiller]
        flight.prefill = leg
        self._submit(p, leg, flight, now, *self._made(p, leg, arrival))

    def _made(self, index: int, req: Request, arrival: Arrival) -> Made:
        """The arrival's prompt block hashes if engine `index` hashes `req` as they were
        made (the same scheme and block size), and its generator key, for a request with
        no adapter (which both would include)."""
        if req.lora_id is not None:
            return None, None
        return (arrival.hashes if self.alike[index] else None), arrival.key

    def _submit(
        self,
        index: int,
        req: Request,
        flight: Flight,
        now: float,
        hashes: list[bytes] | None = None,
        key: int | None = None,
    ) -> None:
        self.flights[req.id] = flight
        engine = self.engines[index]
        engine.sched.add(req, hashes, key)
        self._wake(engine, now)

    def _from_prefill(self, leg: Request, flight: Flight) -> Made:
        """The prefill leg's prompt block hashes and generator key, if the decode leg's are
        the same: the same prompt and adapter (and for the hashes the same scheme and block
        size)."""
        if leg.prompt is not flight.decode.prompt or leg.lora_id != flight.decode.lora_id:
            return None, None
        p = self.engines[flight.prefill_engine].sched
        d = self.engines[flight.decode_engine].sched
        if p.scheme != d.scheme or p.profile.block_size != d.profile.block_size:
            return None, leg.key
        return leg.hashes[: len(leg.prompt) // p.profile.block_size], leg.key

    def _wake(self, engine: SimulatedEngine, now: float) -> None:
        if not engine.stepping:
            engine.stepping = True
            self.queue.push(now, STEP, engine)

    # --- engines ------------------------------------------------------------------------
    def _step(self, engine: SimulatedEngine, now: float) -> None:
        out = engine.pending
        if out is not None:
            engine.pending = None
            self._deliver(out.tokens, out.finished, now)
            engine.ended(out)
        sched = engine.sched
        if not sched.has_work:
            engine.observe()
            engine.stepping = False
            return
        out = sched.step(now)
        engine.steps += 1
        for req in out.kv_pulls:
            self._pull(req, now)
        moved = out.duration or out.prefill_tokens or out.tokens or out.finished
        if not (moved or out.kv_pulls or out.preempted):
            engine.observe()
            engine.stepping = False  # blocked on leased or pulling blocks: wait for a wake
            return
        engine.pending = out
        self.queue.push(now + out.duration, STEP, engine)

    def _deliver(
        self, tokens: list[tuple[Request, int]], finished: list[Request], now: float
    ) -> None:
        flights, eos = self.flights, self.gen.eos
        if self.ignore_eos:  # every token is text: no test per token (~7 M in a 100k run)
            for req, _ in tokens:
                if not req.remote_decode:
                    flights[req.id].token_times.append(now)
        else:
            for req, token in tokens:
                if not req.remote_decode and token != eos:
                    flights[req.id].token_times.append(now)
        for req in finished:
            flight = flights.pop(req.id)
            if req.remote_decode:  # the sidecar now sends the decode leg
                decode = flight.decode
                decode.remote_prefill = {
                    "remote_engine_id": self.engines[flight.prefill_engine].name,
                    "remote_request_id": req.id,
                    "remote_num_tokens": len(req.prompt),
                }
                made = self._from_prefill(req, flight)
                self._submit(flight.decode_engine, decode, flight, now, *made)
            else:
                self._finished(flight, now)

    def _pull(self, req: Request, now: float) -> None:
        flight = self.flights[req.id]
        if req.phase is Phase.WAITING_FOR_KV:
            self.pulls += 1
            seconds = self.link.pull_seconds(len(req.prompt) - req.cached_tokens)
            self.queue.push(now + seconds, KV_PULLED, flight)
        else:  # every block was cached here: only the producer's lease is freed
            self._release(flight, now)

    def _pulled(self, flight: Flight, now: float) -> None:
        self.pulls -= 1
        engine = self.engines[flight.decode_engine]
        engine.sched.kv_loaded(flight.decode.id, True)
        self._wake(engine, now)
        self._release(flight, now)

    def _release(self, flight: Flight, now: float) -> None:
        assert flight.prefill is not None
        producer = self.engines[flight.prefill_engine]
        producer.sched.release_lease(flight.prefill.id)
        flight.prefill = None
        producer.observe()
        self._wake(producer, now)

    def _scrape(self, engine: SimulatedEngine, now: float) -> None:
        engine.scrape(now)
        if self.exhausted and engine is self.engines[0] and self._stuck():
            for flight in list(dict.fromkeys(self.flights.values())):
                self._failed(flight.planned, now, "timeout")
            self.flights.clear()
            return
        self.queue.push(now + self.options.scrape_interval, SCRAPE, engine)

    def _stuck(self) -> bool:
        """Requests left that nothing will move: a real client would time them out."""
        return (
            bool(self.counts.live) and not self.pulls and not any(e.stepping for e in self.engines)
        )

    # --- outcomes -----------------------------------------------------------------------
    def _finished(self, flight: Flight, now: float) -> None:
        late = now - flight.planned.at > self.options.timeout
        self._record(flight.result(now, "timeout" if late else None), now)

    def _failed(self, planned: PlannedRequest, now: float, error: str) -> None:
        self._record(
            Result(planned, planned.at, e2e_ms=(now - planned.at) * 1000.0, error=error), now
        )

    def _record(self, result: Result, now: float) -> None:
        self.results.append(result)
        self.counts.done += 1
        self.counts.live -= 1
        self.counts.now = now
