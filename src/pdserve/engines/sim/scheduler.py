"""Continuous batching over the paged cache, in whatever time the caller keeps.

`Scheduler.step(now)` admits waiting requests, runs one engine iteration and says how long
it took; the caller advances its clock (real or virtual) by that much and then delivers the
tokens. Nothing here sleeps, reads a clock or does I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pdserve.engines.sim.block_manager import BlockManager, block_hashes
from pdserve.engines.sim.profile import Profile
from pdserve.engines.sim.tokens import Generator


class Phase(Enum):
    WAITING = "waiting"
    WAITING_FOR_KV = "waiting_for_remote_kv"  # a P/D consumer pulling its prompt's KV
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    max_tokens: int
    arrival: float
    ignore_eos: bool = False
    remote_decode: bool = False  # P/D producer: stop after the first token, hold the blocks
    remote_prefill: dict[str, Any] | None = None  # P/D consumer: the producer's kv_transfer_params
    phase: Phase = Phase.WAITING
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    computed: int = 0  # prompt tokens whose KV exists (cached, pulled or computed)
    cached_tokens: int = 0
    loaded_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    first_token_at: float | None = None
    key: int = 0

    @property
    def done(self) -> bool:
        return self.phase is Phase.FINISHED


@dataclass
class StepOutput:
    duration: float = 0.0
    tokens: list[tuple[Request, int]] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    kv_pulls: list[Request] = field(default_factory=list)  # consumers whose blocks are allocated
    prefill_tokens: int = 0


@dataclass
class Lease:
    blocks: list[int]
    expires: float
    num_tokens: int


class Scheduler:
    def __init__(
        self,
        profile: Profile,
        generator: Generator,
        blocks: BlockManager,
        lease_seconds: float = 480.0,
        fail_on_kv_error: bool = False,
    ) -> None:
        self.profile = profile
        self.gen = generator
        self.blocks = blocks
        self.lease_seconds = lease_seconds
        self.fail_on_kv_error = fail_on_kv_error
        self.waiting: deque[Request] = deque()
        self.pulling: dict[str, Request] = {}
        self.running: list[Request] = []
        self.leases: dict[str, Lease] = {}

    # --- intake ---------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        req.key = self.gen.key(req.prompt)
        req.hashes = block_hashes(req.prompt, self.profile.block_size)
        self.waiting.append(req)

    def abort(self, req: Request) -> None:
        if req.phase is Phase.WAITING and req in self.waiting:
            self.waiting.remove(req)
        elif req.phase is Phase.WAITING_FOR_KV:
            self.pulling.pop(req.id, None)
            self.blocks.release(req.blocks)
        elif req.phase is Phase.RUNNING:
            self.running.remove(req)
            self.blocks.release(req.blocks)
        req.phase, req.finish_reason = Phase.FINISHED, "abort"

    def kv_loaded(self, req_id: str, ok: bool, error: str | None = None) -> Request | None:
        """The shell finished pulling a consumer's KV; on failure recompute or fail by policy."""
        req = self.pulling.pop(req_id, None)
        if req is None:
            return None
        if ok:
            # The last prompt token is recomputed here: its logits give the first decode token.
            req.loaded_tokens = len(req.prompt) - 1 - req.computed
            req.computed = len(req.prompt) - 1
        elif self.fail_on_kv_error:
            self.blocks.release(req.blocks)
            req.phase, req.finish_reason, req.error = Phase.FINISHED, "error", error
            return req
        req.phase = Phase.RUNNING
        self.running.append(req)
        return req

    # --- leases (P/D producer side) ----------------------------------------------------------
    def release_lease(self, req_id: str) -> bool:
        lease = self.leases.pop(req_id, None)
        if lease is None:
            return False
        self.blocks.release(lease.blocks)
        return True

    def expire_leases(self, now: float) -> list[str]:
        gone = [rid for rid, lease in self.leases.items() if lease.expires <= now]
        for rid in gone:
            self.release_lease(rid)
        return gone

    # --- the engine iteration ----------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self, now: float) -> StepOutput:
        out = StepOutput()
        decoding = [r for r in self.running if r.output]
        prefilling = [r for r in self.running if not r.output]
        self._admit(now, out, prefilling)
        uncached = sum(len(r.prompt) - r.computed for r in prefilling)
        out.prefill_tokens = uncached
        out.duration = self.profile.prefill_seconds(uncached) + self.profile.decode_seconds(
            len(decoding)
        )
        end = now + out.duration
        for req in prefilling:
            req.computed = len(req.prompt)
            self.blocks.commit(req.blocks, req.prompt, req.hashes)
        for req in prefilling + decoding:
            self._emit(req, end, out)
        return out

    def _admit(self, now: float, out: StepOutput, prefilling: list[Request]) -> None:
        budget = self.profile.max_num_batched_tokens
        while self.waiting and len(self.running) + len(self.pulling) < self.profile.max_num_seqs:
            req = self.waiting[0]
            alloc = self.blocks.allocate(req.prompt, req.hashes)
            if alloc is None:
                break
            # As in vLLM, at least the last prompt token is computed to produce logits.
            cached = min(alloc.cached_tokens, len(req.prompt) - 1)
            cost = len(req.prompt) - cached
            if prefilling and cost > budget and req.remote_prefill is None:
                self.blocks.release(alloc.block_ids)
                break
            self.waiting.popleft()
            req.blocks, req.cached_tokens, req.computed = alloc.block_ids, cached, cached
            if req.remote_prefill is not None and cached < len(req.prompt) - 1:
                req.phase = Phase.WAITING_FOR_KV
                self.pulling[req.id] = req
                out.kv_pulls.append(req)
                continue
            budget -= cost
            req.phase = Phase.RUNNING
            self.running.append(req)
            prefilling.append(req)

    def _emit(self, req: Request, end: float, out: StepOutput) -> None:
        position = len(req.output)
        if not self.blocks.grow(req.blocks, len(req.prompt) + position + 1):
            self._finish(req, "length", end, out)  # cache exhausted: vLLM would preempt
            return
        token = self.gen.token(req.key, position)
        if not req.ignore_eos and position >= self.gen.natural_length(req.key):
            token = self.gen.eos
        req.output.append(token)
        if req.first_token_at is None:
            req.first_token_at = end
        if token == self.gen.eos and not req.ignore_eos:
            req.output.pop()
            self._finish(req, "stop", end, out)
            return
        out.tokens.append((req, token))
        if req.remote_decode or len(req.output) >= req.max_tokens:
            self._finish(req, "length", end, out)

    def _finish(self, req: Request, reason: str, end: float, out: StepOutput) -> None:
        self.running.remove(req)
        req.phase, req.finish_reason = Phase.FINISHED, reason
        if req.remote_decode:
            self.leases[req.id] = Lease(req.blocks, end + self.lease_seconds, len(req.prompt))
        else:
            self.blocks.release(req.blocks)
        out.finished.append(req)

    # --- observation ----------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        return {
            "running": len(self.running),
            "waiting": len(self.waiting) + len(self.pulling),
            "kv_usage": self.blocks.usage,
        }
