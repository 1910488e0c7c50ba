"""What the scheduling core sees: endpoints with their last scraped metrics, and requests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pdserve.wire import ROLE_LABEL

T = TypeVar("T")
STALE_AFTER = 2.0  # seconds without a fresh scrape before metrics are not trusted
IN_TRANSIT = 0.02  # seconds a routed request may take to reach its engine (Envoy, sidecar)


@dataclass
class Metrics:
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    updated: float | None = None  # the clock reading of the last successful scrape
    loras_running: frozenset[str] = frozenset()
    loras_waiting: frozenset[str] = frozenset()
    max_loras: int = 0
    # The last scrape failed (refused, non-200, timed out): the engine behind it is taken for
    # down until a scrape succeeds again. Never scraped yet is not down: a new endpoint is
    # routable before its first scrape (50 ms) as before.
    down: bool = False
    # When this EPP sent requests here that no scrape can show yet: flow control's dispatch
    # gate counts them, or a burst between two scrapes would overshoot its threshold.
    sent: list[float] = field(default_factory=list)
    # Scalar endpoint attributes by key: the core metrics extractor's customMetrics, for the
    # endpoint-attribute filter and scorer. A key keeps its last value when a scrape lacks it.
    attributes: dict[str, float] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.down

    def fresh(self, now: float) -> bool:
        return self.updated is not None and now - self.updated <= STALE_AFTER

    @property
    def dispatched(self) -> int:
        return len(self.sent)

    def scraped_since(self, started: float) -> None:
        """A scrape begun at `started` shows every request sent well before it (the time to
        reach the engine is allowed for); the later ones stay counted."""
        cutoff = started - IN_TRANSIT
        if self.sent and self.sent[0] <= cutoff:
            self.sent = [t for t in self.sent if t > cutoff]


@dataclass(eq=False)
class Endpoint:
    address: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # ip:port, the key every scorer and picker uses: built once (a property rebuilt the
    # string several times per endpoint per decision, a visible share of the decision time).
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{self.address}:{self.port}"

    @property
    def role(self) -> str | None:
        return self.labels.get(ROLE_LABEL)


@dataclass
class Request:
    request_id: str
    model: str
    prompt: str  # the text prefix caching hashes
    headers: dict[str, str] = field(default_factory=dict)
    priority: int = 0  # negative: sheddable
    messages: list[dict[str, Any]] | None = None  # a chat request's, for a model's template
    # The engine's own tokens of the prompt, when the request path fetched them
    # (engine_tokens, for a token-producer with `vllm`); the plugins do no I/O themselves.
    prompt_tokens: list[int] | None = None
    # The client's cap on output tokens (max_completion_tokens or max_tokens, max_output_tokens
    # for the Responses API), None when it set none: an output estimate stays under it.
    max_output_tokens: int | None = None

    @property
    def sheddable(self) -> bool:
        return self.priority < 0


@dataclass(frozen=True)
class StateKey(Generic[T]):
    """A key of Cycle.state: its type says what the value is, so the plugin that writes it
    and those that read it agree by declaration (mypy checks `Cycle.get` and `put`), not
    by a string they happen to share."""

    name: str


@dataclass
class Cycle:
    """One scheduling cycle's inputs that are not the request: the clock and randomness,
    plus a scratch space plugins share (e.g. the prefix scorer's hits for the P/D handler)."""

    now: float
    rng: random.Random = field(default_factory=random.Random)
    state: dict[StateKey[Any], Any] = field(default_factory=dict)

    def get(self, key: StateKey[T], default: T) -> T:
        value: T = self.state.get(key, default)
        return value

    def find(self, key: StateKey[T]) -> T | None:
        value: T | None = self.state.get(key)
        return value

    def put(self, key: StateKey[T], value: T) -> T:
        self.state[key] = value
        return value

    def setdefault(self, key: StateKey[T], value: T) -> T:
        out: T = self.state.setdefault(key, value)
        return out


@dataclass
class ProfileResult:
    endpoint: Endpoint | None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # plugin -> endpoint -> s
    candidates: int = 0
    # All the picker chose, best first (maxNumOfEndpoints); `endpoint` is the first.
    endpoints: list[Endpoint] = field(default_factory=list)
    # Where the gateway's retry may go instead: the other picks, then the rest by score.
    fallbacks: list[Endpoint] = field(default_factory=list)
    skipped: bool = False  # a stage its decider declined (not run, not reported)

    def __post_init__(self) -> None:
        if not self.endpoints and self.endpoint is not None:
            self.endpoints = [self.endpoint]


@dataclass
class Result:
    profiles: dict[str, ProfileResult]
    primary: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> Endpoint | None:
        return self.profiles[self.primary].endpoint

    @property
    def fallbacks(self) -> list[Endpoint]:
        return self.profiles[self.primary].fallbacks
