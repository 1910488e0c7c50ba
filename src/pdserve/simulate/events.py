"""The virtual clock: a heap of (time, sequence, kind, subject). The sequence number breaks
ties in insertion order, so equal times never compare subjects and a run is reproducible."""

from __future__ import annotations

import heapq
import itertools
from typing import Any

ARRIVAL, STEP, KV_PULLED, SCRAPE = range(4)

Event = tuple[float, int, int, Any]


class EventQueue:
    def __init__(self) -> None:
        self.heap: list[Event] = []
        self.seq = itertools.count()

    def push(self, at: float, kind: int, subject: Any) -> None:
        heapq.heappush(self.heap, (at, next(self.seq), kind, subject))

    def pop(self) -> Event:
        return heapq.heappop(self.heap)

    def __len__(self) -> int:
        return len(self.heap)
