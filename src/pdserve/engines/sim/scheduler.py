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

from pdserve.block_hashes import Scheme
from pdserve.engines.sim.block_manager import BlockManager
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
    hashes: list[bytes] = field(default_factory=list)  # of the full blocks of prompt + output
    computed: int = 0  # tokens of prompt + output whose KV exists (cached, pulled or computed)
    committed: int = 0  # full blocks registered in the prefix cache
    cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    loaded_tokens: int = 0  # prompt tokens pulled from a P/D producer
    preemptions: int = 0
    finish_reason: str | None = None
    error: str | None = None
    scheduled_at: float | None = None  # first admission (end of its queueing)
    first_token_at: float | None = None
    key: int = 0
    external_id: str = ""  # the caller's id (x-request-id), for logs only
    lora_id: int | None = None  # a LoRA adapter (1-based, as vLLM numbers them); None: base

    @property
    def done(self) -> bool:
        return self.phase is Phase.FINISHED

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def pending(self) -> int:
        """Tokens to run through the model before the next token can be sampled."""
        return self.num_tokens - self.computed

    def context(self) -> list[int]:
        return self.prompt + self.output if self.output else self.prompt

    def span(self, start: int, stop: int) -> list[int]:
        """`context()[start:stop]` without copying the whole context (a decode commit
        hashes one block of a context hundreds of tokens long)."""
        p = len(self.prompt)
        if stop <= p:
            return self.prompt[start:stop]
        if start >= p:
            return self.output[start - p : stop - p]
        return self.prompt[start:] + self.output[: stop - p]


@dataclass
class StepOutput:
    duration: float = 0.0
    tokens: list[tuple[Request, int]] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    kv_pulls: list[Request] = field(default_factory=list)  # consumers whose blocks are allocated
    preempted: list[Request] = field(default_factory=list)
    prefill_tokens: int = 0  # prompt (or recomputed) tokens run this step
    decode_batch: int = 0  # requests that ran one decode token
    # Running, waiting and KV usage as the step leaves them: vLLM makes its stats after a
    # step and adds arrivals only between steps, so /metrics shows these from its end.
    left: tuple[int, int, float] = (0, 0, 0.0)


@dataclass
class Lease:
    blocks: list[int]
    expires: float
    num_tokens: int
    external_id: str = ""  # the caller's x-request-id, for logs only


class Scheduler:
    """vLLM V1's policy: running requests first, then waiting ones in arrival order, all
    within one token budget per step (chunked prefill); when the cache runs out, the most
    recently admitted request is preempted and later recomputed."""

    def __init__(
        self,
        profile: Profile,
        generator: Generator,
        blocks: BlockManager,
        lease_seconds: float = 480.0,
        fail_on_kv_error: bool = False,
        max_loras: int = 1,
        scheme: Scheme | None = None,
    ) -> None:
        self.profile = profile
        self.scheme = scheme or Scheme()
        self.max_loras = max_loras  # distinct adapters in one batch (vLLM --max-loras)
        self.gen = generator
        self.blocks = blocks
        self.lease_seconds = lease_seconds
        self.fail_on_kv_error = fail_on_kv_error
        self.waiting: deque[Request] = deque()
        self.pulling: dict[str, Request] = {}
        self.running: list[Request] = []
        self.leases: dict[str, Lease] = {}
        self.num_preemptions = 0

    # --- intake ---------------------------------------------------------------------------
    def add(self, req: Request, hashes: list[bytes] | None = None, key: int | None = None) -> None:
        """Queue `req`. `hashes`, if given, are its prompt's full-block hashes under this
        scheduler's scheme and block size, and `key` its `Generator.key` (a caller that has
        them already: the simulator, which makes them ahead or took them from a prefill leg
        of the same prompt)."""
        req.key = self.gen.key(req.prompt, req.lora_id or 0) if key is None else key
        if hashes is None:
            hashes = self.scheme.hashes(req.prompt, self.profile.block_size, None, _extra(req))
        req.hashes = hashes
        self.waiting.append(req)

    def abort(self, req: Request) -> None:
        if req.phase is Phase.WAITING and req in self.waiting:
            self.waiting.remove(req)
        elif req.phase is Phase.WAITING_FOR_KV:
            pass  # bytes may still be landing in its blocks: kv_loaded frees them
        elif req.phase is Phase.RUNNING:
            self.running.remove(req)
            self.blocks.release(req.blocks)
        req.phase, req.finish_reason = Phase.FINISHED, "abort"

    def kv_loaded(
        self, req_id: str, ok: bool, error: str | None = None, upto: int | None = None
    ) -> Request | None:
        """The shell finished pulling a consumer's KV for its first `upto` prompt tokens (all
        by default); the rest is computed here. On failure recompute or fail by policy."""
        req = self.pulling.pop(req_id, None)
        if req is None:
            return None
        if req.done:  # aborted while pulling
            self.blocks.release(req.blocks)
            return None
        if ok:
            # The last prompt token is recomputed here: its logits give the first decode token.
            loaded = min(len(req.prompt) - 1, len(req.prompt) if upto is None else upto)
            req.loaded_tokens = max(0, loaded - req.computed)
            req.computed = max(req.computed, loaded)
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

    def producer_refusal(self, req: Request, max_leases: int) -> str | None:
        """Why a new P/D producer request must be refused now, or None.

        A lease frees its blocks only when a consumer claims it or it expires, minutes
        later: a producer past `max_leases` (0: no bound), or one whose prompt cannot fit
        beside the blocks leases pin, would wait on events that may never come. The caller
        answers 503 at once, so the proxy can fall back instead of its client timing out.
        """
        held = len(self.leases) + sum(1 for r in (*self.waiting, *self.running) if r.remote_decode)
        if max_leases and held >= max_leases:
            return f"{held} P/D prefills hold or await KV leases (max {max_leases})"
        pinned = {b for lease in self.leases.values() for b in lease.blocks}
        if not pinned:
            return None
        hashes = self.scheme.hashes(req.prompt, self.profile.block_size, None, _extra(req))
        shared = sum(1 for b in self.blocks.match(hashes) if b in pinned)
        need = self.blocks.blocks_for(len(req.prompt) + 1) - shared
        room = self.blocks.num_blocks - len(pinned)
        if need > room:
            return f"the prompt needs {need} KV blocks and {room} are not held by KV leases"
        return None

    def expire_leases(self, now: float) -> list[tuple[str, Lease]]:
        gone = [(rid, lease) for rid, lease in self.leases.items() if lease.expires <= now]
        for rid, _ in gone:
            self.release_lease(rid)
        return gone

    # --- the engine iteration ----------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self, now: float) -> StepOutput:
        """Schedule one iteration, run it in model time, return its duration and tokens.

        The per-token path is inlined (`pending`, `BlockManager.grow`'s no-op case, the
        `_commit` test, the batch's tally, sampling): a decode step runs it once per
        sequence, millions of times in a simulation. The slow paths are methods."""
        out = StepOutput()
        profile = self.profile
        budget = profile.max_num_batched_tokens
        batch: list[tuple[Request, int]] = []
        running = Phase.RUNNING
        cap = self.blocks.block_size  # tokens per block of a block table, as grow() counts
        decode_batch = context = prefill_tokens = 0
        for req in list(self.running):
            if budget <= 0:
                break
            if req.phase is not running:
                continue  # preempted earlier in this loop
            total = len(req.prompt) + len(req.output)
            n = total - req.computed
            if n > budget:
                n = budget
            need = req.computed + n
            if len(req.blocks) * cap >= need or self._reserve(req, need, out):
                batch.append((req, n))
                budget -= n
                if n == 1 and req.output:
                    decode_batch += 1
                    context += total
                else:
                    prefill_tokens += n
        if out.preempted:  # a victim may have been scheduled before it was preempted
            batch = [(r, n) for r, n in batch if r.phase is running]
            decode_batch, context, prefill_tokens = _tally(batch)
        else:  # as vLLM: no new admissions in a step that had to preempt
            first = len(batch)
            self._admit(now, out, batch, budget)
            if len(batch) > first:
                d, c, p = _tally(batch[first:])
                decode_batch, context, prefill_tokens = (
                    decode_batch + d,
                    context + c,
                    prefill_tokens + p,
                )
        out.decode_batch, out.prefill_tokens = decode_batch, prefill_tokens
        out.duration = profile.step_seconds(prefill_tokens, decode_batch, context)
        self._run(batch, now + out.duration, out)
        out.left = self.counts()
        return out

    def _run(self, batch: list[tuple[Request, int]], end: float, out: StepOutput) -> None:
        """The batch's tokens computed by `end`: full blocks committed, and a token sampled
        for each request whose context is now all computed (as `Generator` picks it)."""
        bs = self.profile.block_size
        gen = self.gen
        token_of, eos, tokens = gen.token, gen.eos, out.tokens
        for req, n in batch:
            computed = req.computed + n
            req.computed = computed
            if computed // bs > req.committed and len(req.blocks) > req.committed:
                self._commit(req)
            output = req.output
            position = len(output)
            if computed != len(req.prompt) + position:
                continue  # a prefill chunk short of the prompt's end
            token = token_of(req.key, position)
            if req.ignore_eos:
                stop = False
            elif position >= gen.natural_length(req.key):
                token, stop = eos, True
            else:
                stop = token == eos
            if req.first_token_at is None:
                req.first_token_at = end
            # EOS is a generated token, as in vLLM: counted in completion_tokens, decoded to "".
            output.append(token)
            tokens.append((req, token))
            if stop:
                self._finish(req, "stop", end, out)
            elif req.remote_decode or position + 1 >= req.max_tokens:
                self._finish(req, "length", end, out)

    def _reserve(self, req: Request, num_tokens: int, out: StepOutput) -> bool:
        """Blocks for `num_tokens` of `req`, preempting from the back of the queue if needed;
        False when `req` itself had to go."""
        while not self.blocks.grow(req.blocks, num_tokens):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request, out: StepOutput) -> None:
        self.running.remove(req)
        self.blocks.release(req.blocks)
        req.blocks, req.computed, req.committed = [], 0, 0
        req.phase = Phase.WAITING
        req.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        out.preempted.append(req)

    def _admit(
        self, now: float, out: StepOutput, batch: list[tuple[Request, int]], budget: int
    ) -> None:
        if not self.waiting:
            return  # most steps: no walk over the batch for its adapters
        loras = self.active_loras()
        skipped: list[Request] = []  # requests of adapters that would exceed max_loras
        while (
            self.waiting
            and budget > 0
            and len(self.running) + len(self.pulling) < self.profile.max_num_seqs
        ):
            req = self.waiting[0]
            if req.lora_id and req.lora_id not in loras and len(loras) >= self.max_loras:
                skipped.append(self.waiting.popleft())  # vLLM lets later requests go first
                continue
            tokens = req.context()
            self._extend_hashes(req, len(tokens))
            alloc = self.blocks.allocate(tokens, req.hashes)
            if alloc is None:
                break  # the head of the queue waits for space; no skipping ahead, as vLLM
            self.waiting.popleft()
            if req.lora_id:
                loras.add(req.lora_id)
            # As in vLLM, at least the last token is computed to produce logits.
            cached = min(alloc.cached_tokens, len(tokens) - 1)
            req.blocks, req.computed, req.committed = (
                alloc.block_ids,
                cached,
                cached // (self.profile.block_size),
            )
            if not req.preemptions:
                req.cached_tokens = cached
                req.scheduled_at = now
            if req.remote_prefill is not None and not req.preemptions:
                if cached < len(req.prompt) - 1:
                    req.phase = Phase.WAITING_FOR_KV
                    self.pulling[req.id] = req
                    out.kv_pulls.append(req)
                    continue
                out.kv_pulls.append(req)  # all cached locally: the shell only frees the lease
            req.phase = Phase.RUNNING
            self.running.append(req)
            n = min(req.pending, budget)
            batch.append((req, n))
            budget -= n
        self.waiting.extendleft(reversed(skipped))

    def active_loras(self) -> set[int]:
        return {r.lora_id for r in (*self.running, *self.pulling.values()) if r.lora_id}

    def _extend_hashes(self, req: Request, num_tokens: int) -> None:
        bs = self.profile.block_size
        full = num_tokens // bs
        if len(req.hashes) < full:
            start = len(req.hashes) * bs
            parent = req.hashes[-1] if req.hashes else None
            req.hashes += self.scheme.hashes(req.span(start, full * bs), bs, parent, _extra(req))

    def _commit(self, req: Request) -> None:
        """Register the request's newly completed blocks in the prefix cache."""
        bs = self.profile.block_size
        full = min(req.computed // bs, len(req.blocks))
        if full > req.committed:
            self._extend_hashes(req, full * bs)
            first = req.committed * bs  # only the new blocks' tokens, not the whole context
            tokens = req.span(first, full * bs)
            self.blocks.commit(
                req.blocks[:full], tokens, req.hashes[:full], req.committed, req.lora_id, first
            )
            req.committed = full

    def _finish(self, req: Request, reason: str, end: float, out: StepOutput) -> None:
        self.running.remove(req)
        req.phase, req.finish_reason = Phase.FINISHED, reason
        if req.remote_decode:
            self.leases[req.id] = Lease(
                req.blocks, end + self.lease_seconds, len(req.prompt), req.external_id
            )
        else:
            self.blocks.release(req.blocks)
        out.finished.append(req)

    # --- observation ----------------------------------------------------------------------------
    def counts(self) -> tuple[int, int, float]:
        """Running, waiting (a pull is waiting, as in vLLM) and KV usage: /metrics' gauges."""
        return len(self.running), len(self.waiting) + len(self.pulling), self.blocks.usage


def _tally(batch: list[tuple[Request, int]]) -> tuple[int, int, int]:
    """A batch's decode sequences, their context tokens, and its prefill tokens: a request
    with one token to run and output so far decodes; any other runs prompt (or recomputes)."""
    decode_batch = context = prefill_tokens = 0
    for req, n in batch:
        if n == 1 and req.output:
            decode_batch += 1
            context += len(req.prompt) + len(req.output)
        else:
            prefill_tokens += n
    return decode_batch, context, prefill_tokens


def _extra(req: Request) -> tuple[str, ...] | None:
    """Blocks computed under an adapter are a different cache entry: vLLM puts the LoRA's
    name in the block hash's extra keys (the sim names adapters by number)."""
    return (f"lora-{req.lora_id}",) if req.lora_id else None
