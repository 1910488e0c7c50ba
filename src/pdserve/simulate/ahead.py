"""Arrivals made ahead: each planned request with its prompt tokens and block hashes, made
by a forked worker on the machine's second core while this process simulates.

Making a request (its text from the generator, its tokens through the model's tokenizer,
its prompt's block hashes) is a pure function of the workload and the seed, and about a
sixth of what a simulated request costs; nothing the fleet does feeds back into it. So it
can run beside the event loop and stream its results in order, in batches, and the
simulation is the same, request for request (tests/simulate/test_ahead.py checks it).
Without `fork` (or when asked) the same function runs inline.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pdserve.bench.generator import PlannedRequest
from pdserve.block_hashes import Scheme
from pdserve.engines.sim.tokens import Generator
from pdserve.simulate.traffic import Traffic

# Requests per message: a pickle and a pipe write cost ~50 us each, a request ~5 us more.
BATCH = 256
_PLANNED = tuple(f.name for f in dataclasses.fields(PlannedRequest))


@dataclass(frozen=True)
class Arrival:
    planned: PlannedRequest
    tokens: list[int]  # the prompt as the engines tokenize it
    hashes: list[bytes]  # its full blocks' hashes, under `Preparer.scheme` and `.block_size`
    key: int  # what its continuation depends on (`Generator.key`, no adapter)


@dataclass(frozen=True)
class Preparer:
    """What an arrival needs before the fleet sees it; `scheme` and `block_size` are an
    engine's (the simulator uses the hashes only on engines that hash alike)."""

    traffic: Traffic
    scheme: Scheme
    block_size: int

    def __call__(self, planned: PlannedRequest) -> Arrival:
        tokens = self.traffic.tokens(planned)
        hashes = self.scheme.hashes(tokens, self.block_size, None, None)
        return Arrival(planned, tokens, hashes, Generator.key(tokens))


def arrivals(
    plan: Iterator[PlannedRequest], prepare: Preparer, ahead: bool = True
) -> Iterator[Arrival]:
    """`plan`'s arrivals in order; with `ahead`, made in a worker process that owns `plan`
    from now on. Close the iterator when done with it: that stops the worker."""
    if not ahead or "fork" not in multiprocessing.get_all_start_methods():
        return map(prepare, plan)
    return _forked(plan, prepare)


def _forked(plan: Iterator[PlannedRequest], prepare: Preparer) -> Iterator[Arrival]:
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_produce, args=(plan, prepare, send), daemon=True)
    worker.start()
    send.close()  # the worker's end: EOF here once it exits
    try:
        while True:
            try:
                batch = recv.recv()
            except EOFError:
                raise RuntimeError("the simulator's request worker died") from None
            if isinstance(batch, BaseException):
                raise batch
            if not batch:
                return
            for fields, *made in batch:
                yield Arrival(PlannedRequest(*fields), *made)
    finally:
        recv.close()
        worker.terminate()
        worker.join(5)
        if worker.is_alive():
            worker.kill()
            worker.join()


def _produce(plan: Iterator[PlannedRequest], prepare: Preparer, send: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # and its terminate() ends this at once
    try:
        made = map(prepare, plan)
        while batch := list(itertools.islice(made, BATCH)):
            send.send([_pack(a) for a in batch])
        send.send([])
    except BrokenPipeError:
        return  # the simulation ended first
    except Exception as err:  # a workload's error, raised in the simulation instead
        send.send(err)
    finally:
        send.close()


def _pack(a: Arrival) -> tuple[Any, ...]:
    """Plain tuples unpickle ~10x faster than dataclasses."""
    return tuple(getattr(a.planned, n) for n in _PLANNED), a.tokens, a.hashes, a.key
