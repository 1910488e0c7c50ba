"""The request stream a workload describes: a pure function of (workload, seed, duration).

No I/O and no clock: bench sends these at their offsets in wall time, the simulator will
replay them in virtual time, and the same seed gives both the same requests. Each concern
(arrivals, lengths, groups, adapters) draws from its own random stream, so changing, say,
the LoRA mix does not move the arrival times.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pdserve.bench.text import words
from pdserve.bench.workload import (
    Bursts,
    Constant,
    Distribution,
    Fixed,
    LogNormal,
    Normal,
    Poisson,
    Uniform,
    Workload,
)


@dataclass(frozen=True)
class PlannedRequest:
    """One request to send `at` seconds after the start. `model` is an adapter name, or None
    for the model given on the command line. Exactly one of `messages` (chat) and `prompt`
    (completions) is set; `input_tokens` is the planned length of the new text. `label` is
    a replay record's class, which the report breaks its figures down by."""

    index: int
    at: float
    max_tokens: int
    input_tokens: int
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    model: str | None = None
    group: int | None = None
    conversation: int | None = None
    turn: int | None = None
    label: str | None = None


def _stream(seed: int, name: str) -> random.Random:
    # A str seed is hashed with SHA-512, the same in every process (no PYTHONHASHSEED).
    return random.Random(f"pdserve-bench:{seed}:{name}")


def arrivals(workload: Workload, rng: random.Random) -> Iterator[float]:
    """Offsets in seconds, ascending, without end."""
    arrival = workload.arrival
    if isinstance(arrival, Poisson):
        t = 0.0
        while True:
            t += rng.expovariate(arrival.rate)
            yield t
    elif isinstance(arrival, Constant):
        for i in itertools.count():
            yield i / arrival.rate
    elif isinstance(arrival, Bursts):
        for burst in itertools.count():
            for k in range(arrival.size):
                yield burst * arrival.period + k / arrival.rate
    else:  # pragma: no cover - the workload model requires one
        raise ValueError("workload has no arrival process")


def sample(dist: Distribution, rng: random.Random) -> int:
    """A length in tokens."""
    if isinstance(dist, Fixed):
        return dist.value
    if isinstance(dist, Uniform):
        return rng.randint(dist.min, dist.max)
    if isinstance(dist, Normal):
        value = rng.gauss(dist.mean, dist.std)
    elif isinstance(dist, LogNormal):
        mu = math.log(dist.mean) - dist.sigma**2 / 2  # so that E[value] == dist.mean
        value = rng.lognormvariate(mu, dist.sigma)
    else:  # pragma: no cover
        raise ValueError(f"unknown distribution {dist!r}")
    n = round(value)
    n = max(n, dist.min)
    return n if dist.max is None else min(n, dist.max)


def _adapters(workload: Workload, rng: random.Random) -> Iterator[str | None]:
    if not workload.lora:
        while True:
            yield None
    names = [a.name for a in workload.lora]
    weights = [a.weight for a in workload.lora]
    while True:
        yield rng.choices(names, weights)[0]


def requests(workload: Workload, seed: int, duration: float | None) -> Iterator[PlannedRequest]:
    """The requests whose offset is below `duration` seconds (all of them if None: a
    closed-loop run takes as many as it has time for)."""
    if workload.replay is not None:
        yield from _replay(workload, seed, duration)
        return
    assert workload.output_tokens is not None
    times = arrivals(workload, _stream(seed, "arrival"))
    lengths = _stream(seed, "lengths")
    text = _stream(seed, "text")
    groups = _stream(seed, "groups")
    adapters = _adapters(workload, _stream(seed, "lora"))
    prefixes: dict[int, str] = {}
    chat = workload.chat
    histories: dict[int, list[dict[str, Any]]] = {}
    for index, at in enumerate(times):
        if duration is not None and at >= duration:
            return
        max_tokens = sample(workload.output_tokens, lengths)
        model = next(adapters)
        group = None
        if workload.shared_prefix is not None:
            shared = workload.shared_prefix
            group = groups.randrange(shared.groups)
            if group not in prefixes:
                # Its own stream: a group's prefix is the same whichever request comes first.
                prefixes[group] = words(_stream(seed, f"prefix:{group}"), shared.prefix_tokens)
            suffix_tokens = sample(shared.suffix_tokens, lengths)
            new_text = words(text, suffix_tokens)
            input_tokens = shared.prefix_tokens + suffix_tokens
        else:
            assert workload.input_tokens is not None
            input_tokens = sample(workload.input_tokens, lengths)
            new_text = words(text, input_tokens)
        if workload.api == "completions":
            prompt = (prefixes[group] if group is not None else "") + new_text
            yield PlannedRequest(
                index, at, max_tokens, input_tokens, prompt=prompt, model=model, group=group
            )
            continue
        messages: list[dict[str, Any]] = []
        if group is not None:
            messages.append({"role": "system", "content": prefixes[group].lstrip()})
        conversation = turn = None
        if chat is not None and chat.turns > 1:
            slot, round_ = index % chat.conversations, index // chat.conversations
            conversation = (round_ // chat.turns) * chat.conversations + slot
            turn = round_ % chat.turns
            if turn == 0:
                histories.pop(slot, None)
            history = histories.setdefault(slot, [])
            if chat.history:
                messages += history
            user = {"role": "user", "content": new_text.lstrip()}
            messages.append(user)
            if chat.history:
                history += [user, {"role": "assistant", "content": words(text, max_tokens)}]
        else:
            messages.append({"role": "user", "content": new_text.lstrip()})
        yield PlannedRequest(
            index,
            at,
            max_tokens,
            input_tokens,
            messages=messages,
            model=model,
            group=group,
            conversation=conversation,
            turn=turn,
        )


def _replay(workload: Workload, seed: int, duration: float | None) -> Iterator[PlannedRequest]:
    assert workload.replay is not None
    replay = workload.replay
    records = sorted(replay.records, key=lambda r: r.timestamp)
    origin = records[0].timestamp
    text = _stream(seed, "text")
    for index, record in enumerate(records):
        at = (record.timestamp - origin) / replay.speed
        if duration is not None and at >= duration:
            return
        if record.text is not None:
            body, length = record.text, len(record.text.split())
        else:
            assert record.input_tokens is not None
            body, length = words(text, record.input_tokens).lstrip(), record.input_tokens
        chat = workload.api == "chat"
        yield PlannedRequest(
            index,
            at,
            record.output_tokens,
            length,
            messages=[{"role": "user", "content": body}] if chat else None,
            prompt=None if chat else body,
            model=record.model,
            label=record.label,
        )
