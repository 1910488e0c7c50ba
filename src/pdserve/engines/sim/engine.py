"""The engine on a real clock: the scheduler driven by one asyncio task, KV pulls beside it.

One task runs engine steps: it asks the scheduler for a step, sleeps for the step's
modelled duration, then hands each request its token. P/D pulls run as separate tasks so
the engine keeps stepping while KV moves. The HTTP API (server.py) only submits requests
and reads their token queues; a virtual-time driver would use the scheduler directly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import xxhash

from pdserve import kv_release
from pdserve.block_hashes import Scheme, event_key
from pdserve.engines.sim import side_channel
from pdserve.engines.sim.block_manager import BlockManager
from pdserve.engines.sim.kv_arena import KVArena
from pdserve.engines.sim.kv_config import KVConfig
from pdserve.engines.sim.kv_events import KVEventPublisher
from pdserve.engines.sim.metrics import EngineMetrics
from pdserve.engines.sim.nixl_transport import make_nixl
from pdserve.engines.sim.openai_api import Params, check_kv_params
from pdserve.engines.sim.profile import Profile
from pdserve.engines.sim.scheduler import Phase, Request, Scheduler
from pdserve.engines.sim.tokens import Generator
from pdserve.logs import event
from pdserve.tokenization import Tokenizer, request_tokens, token_bytes
from pdserve.vllm_request import ApiError

log = logging.getLogger("pdserve.sim")


@dataclass
class EngineConfig:
    served_model_name: str
    profile: Profile
    tokenizer: Tokenizer
    aliases: tuple[str, ...] = ()  # further --served-model-name values, also accepted
    enable_prefix_caching: bool = True
    tp_size: int = 1
    model_path: str | None = None
    kv_transfer: dict[str, Any] | None = None  # parsed --kv-transfer-config
    kv_events: dict[str, Any] | None = None  # parsed --kv-events-config
    hash_scheme: Scheme = field(default_factory=Scheme)  # --prefix-caching-hash-algo
    side_channel_host: str = "127.0.0.1"
    side_channel_port: int = 0
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, path), as --lora-modules
    max_loras: int = 1
    # --max-kv-leases: P/D prefills holding or awaiting a lease at once (0: no bound).
    max_kv_leases: int = 256

    def lora_id(self, name: str) -> int | None:
        """vLLM numbers adapters from 1 in the order given."""
        names = [n for n, _ in self.lora_modules]
        return names.index(name) + 1 if name in names else None


class SimEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        p = cfg.profile
        self.engine_id = str(uuid.uuid4())
        self.publisher = KVEventPublisher(cfg.kv_events, p.block_size) if cfg.kv_events else None
        self.blocks = BlockManager(
            p.num_blocks,
            p.block_size,
            self.publisher.add if self.publisher else None,
            enable_caching=cfg.enable_prefix_caching,
        )
        self.gen = Generator(cfg.tokenizer)
        # As vLLM, a sequence must fit in the KV cache: a smaller cache lowers the limit.
        self.max_model_len = min(p.max_model_len, p.num_blocks * p.block_size)
        if self.max_model_len < p.max_model_len:
            event(log, "max_model_len_capped", max_model_len=self.max_model_len)
        kv = KVConfig.parse(cfg.kv_transfer, os.environ)
        self.pull_timeout = kv.pull_timeout
        self.sched = Scheduler(
            p,
            self.gen,
            self.blocks,
            kv.lease_seconds,
            kv.policy == "fail",
            cfg.max_loras,
            cfg.hash_scheme,
        )
        self.arena = KVArena(p.num_blocks, p.block_bytes)
        self.nixl = None
        if cfg.kv_transfer and kv.transport == "nixl" and p.block_bytes:
            self.nixl = make_nixl(self.arena)
        self.side = side_channel.SideChannelServer(
            self.arena, self._leased, self._release, self.nixl, kv.fault
        )
        self.metrics = EngineMetrics(
            cfg.served_model_name,
            {
                "block_size": str(p.block_size),
                "num_gpu_blocks": str(p.num_blocks),
                "enable_prefix_caching": str(cfg.enable_prefix_caching),
                "cache_dtype": "auto",
            },
        )
        self.queues: dict[str, asyncio.Queue[int | None]] = {}
        self.wake = asyncio.Event()
        self.ids = itertools.count()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.lease_checksums: dict[str, int] = {}

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self.cfg.kv_transfer:
            self.cfg.side_channel_port = await self.side.start(
                self.cfg.side_channel_host, self.cfg.side_channel_port
            )
        self._spawn(self._engine_loop())
        self._spawn(self._lease_reaper())

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.side.close()
        if self.publisher:
            self.publisher.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # --- the engine loop ----------------------------------------------------------------
    async def _idle(self) -> None:
        """Report the gauges as they stand, then sleep until a request or a freed block."""
        self._observe()
        self.wake.clear()
        await self.wake.wait()

    async def _engine_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.sched.has_work:
                await self._idle()
            out = self.sched.step(loop.time())
            for req in out.kv_pulls:
                self._spawn(self._pull(req))
            progress = out.tokens or out.finished or out.kv_pulls or out.preempted
            if not (out.duration or out.prefill_tokens or progress):
                # Work is queued but cannot run (its blocks are held by leases or pulls):
                # sleep until something frees space instead of spinning.
                await self._idle()
                continue
            await asyncio.sleep(out.duration)
            for req, token in out.tokens:
                self._deliver(req, token)
            for req in out.finished:
                self._finished(req)
            if out.prefill_tokens:
                self.metrics.computed_tokens.inc(out.prefill_tokens)
            if out.tokens:
                self.metrics.generation_tokens.inc(len(out.tokens))
            if out.preempted:
                self.metrics.preemptions.inc(len(out.preempted))
            self._observe(out.left)  # not the requests that arrived while it ran

    def _deliver(self, req: Request, token: int) -> None:
        if len(req.output) == 1:
            self.metrics.prompt_tokens.inc(len(req.prompt))
        queue = self.queues.get(req.id)
        if queue is not None:
            queue.put_nowait(token)

    def _finished(self, req: Request) -> None:
        if req.remote_decode and self.arena.block_bytes and req.id in self.sched.leases:
            blocks = self._prompt_blocks(req)
            self._fill_blocks(req, len(blocks))
            self.lease_checksums[req.id] = self.arena.checksum(blocks)
        queue = self.queues.get(req.id)
        if queue is not None:
            queue.put_nowait(None)

    def _fill_blocks(self, req: Request, count: int) -> None:
        """Give a producer's blocks their bytes (derived from each block's prefix). Only KV
        that may leave the engine is materialised, so aggregated serving pays nothing."""
        for i in range(count):
            self.arena.fill(req.blocks[i], self._block_seed(req, i))

    def _block_seed(self, req: Request, i: int) -> int:
        if i < len(req.hashes):
            return event_key(req.hashes[i])
        bs = self.cfg.profile.block_size
        parent = event_key(req.hashes[-1]) if req.hashes else 0
        tail = req.prompt[i * bs : (i + 1) * bs]
        return xxhash.xxh64_intdigest(token_bytes(tail), seed=parent)

    def _observe(self, counts: tuple[int, int, float] | None = None) -> None:
        """Set the gauges from `counts` (those a step left) or from the state as it stands."""
        running, queued, kv_usage = self.sched.counts() if counts is None else counts
        self.metrics.observe_state(running, queued, kv_usage, len(self.sched.leases))
        if self.cfg.lora_modules:
            names = [n for n, _ in self.cfg.lora_modules]
            waiting = {r.lora_id for r in self.sched.waiting if r.lora_id}
            self.metrics.observe_loras(
                [names[i - 1] for i in sorted(self.sched.active_loras())],
                [names[i - 1] for i in sorted(waiting)],
                self.cfg.max_loras,
            )
        if self.publisher:
            self.publisher.flush()

    async def _lease_reaper(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.5)
            for rid, lease in self.sched.expire_leases(loop.time()):
                self.lease_checksums.pop(rid, None)
                event(log, "kv_lease_expired", request_id=rid, x_request_id=lease.external_id)
                self._observe()
                self.wake.set()

    # --- P/D ------------------------------------------------------------------------------
    def _leased(self, rid: str) -> side_channel.Leased | None:
        lease = self.sched.leases.get(rid)
        if lease is None:
            return None
        blocks = lease.blocks[: self.blocks.blocks_for(lease.num_tokens)]
        return side_channel.Leased(blocks, self.lease_checksums.get(rid))

    def _prompt_blocks(self, req: Request) -> list[int]:
        return req.blocks[: self.blocks.blocks_for(len(req.prompt))]

    def _release(self, rid: str) -> bool:
        """The side channel's release: whoever sends it (a consumer after its pull, or one
        that will never pull), the blocks are free at once; False when nothing was held."""
        self.lease_checksums.pop(rid, None)
        lease = self.sched.leases.get(rid)
        if lease is None or not self.sched.release_lease(rid):
            return False
        event(log, "kv_lease_released", request_id=rid, x_request_id=lease.external_id)
        self._observe()
        self.wake.set()
        return True

    def undelivered(self, req: Request) -> None:
        """A P/D prefill that finished as its client left: the KV handle never went out, so
        no consumer can claim the lease. vLLM keeps such a lease until it expires; the sim
        frees it, as the proxy would have if the handle had reached it."""
        if req.remote_decode and req.done and req.id in self.sched.leases:
            event(log, "kv_handle_undelivered", request_id=req.id, x_request_id=req.external_id)
            self._release(req.id)

    def refuse_producer(self, req: Request) -> None:
        """A 503 now for a P/D prefill that leases would leave waiting (see
        Scheduler.producer_refusal): vLLM would queue it, but behind leases that only a
        consumer or the 480 s expiry frees, so its proxy's client times out instead."""
        if not req.remote_decode:
            return
        reason = self.sched.producer_refusal(req, self.cfg.max_kv_leases)
        if reason is None:
            return
        self.metrics.lease_refusals.inc()
        event(
            log,
            "kv_lease_refused",
            logging.WARNING,
            request_id=req.id,
            x_request_id=req.external_id,
            reason=reason,
            leases=len(self.sched.leases),
        )
        raise ApiError(503, f"The KV cache cannot take this prefill now: {reason}.")

    def release_unclaimed(
        self, params: dict[str, Any], external_id: str, reason: str, request_id: str | None = None
    ) -> None:
        """A consumer request that will never pull tells its producer to free the lease, as
        vLLM's NixlConnector does for a do_remote_prefill request aborted before it was
        scheduled (request_finished) or rejected before admission (the serving layer's
        notify on early rejection): otherwise the blocks wait out the lease timeout."""
        if not (params.get("do_remote_prefill") and params.get("remote_request_id")):
            return
        self._spawn(self._release_remote(params, external_id, reason, request_id))

    async def _pull(self, req: Request) -> None:
        params = req.remote_prefill or {}
        if req.phase is not Phase.WAITING_FOR_KV:
            # All of it cached here, or aborted before its pull began: nothing to read, and
            # an aborted one's blocks are freed (kv_loaded) instead of waiting on a pull.
            why = "aborted before its pull" if req.done else "prompt fully cached locally"
            self.sched.kv_loaded(req.id, False)
            await self._release_remote(params, req.external_id, why, req.id)
            self.wake.set()
            return
        bs = self.cfg.profile.block_size
        skip = req.cached_tokens // bs
        # Types were checked on arrival (check_kv_params): a bad one here would leave the
        # request waiting for KV forever.
        remote = list(params.get("remote_block_ids") or [])[skip:]
        local = req.blocks[skip : skip + len(remote)]
        remote = remote[: len(local)]
        start = time.perf_counter()
        ok, error, transport, nbytes = False, None, "none", 0
        try:
            host, port = params.get("remote_host"), params.get("remote_port")
            if not host or not port or not params.get("remote_request_id"):
                raise side_channel.TransferError("kv_transfer_params lack remote host/port/request")
            result = await side_channel.pull(
                str(host),
                int(port),
                str(params["remote_request_id"]),
                remote,
                local,
                self.arena,
                self.nixl,
                self.pull_timeout,
            )
            ok, transport, nbytes = True, result.transport, result.nbytes
            # Model the transfer of a real model's KV when that is slower than these bytes.
            modelled = self.cfg.profile.kv_pull_seconds(len(req.prompt) - req.cached_tokens)
            await asyncio.sleep(max(0.0, modelled - (time.perf_counter() - start)))
        except (side_channel.TransferError, ValueError, TypeError) as err:
            error = str(err)
        self.metrics.kv_pulls.labels(
            **self.metrics.values, transport=transport, outcome="ok" if ok else "failed"
        ).inc()
        self.metrics.kv_pull_bytes.inc(nbytes)
        event(
            log,
            "kv_pull",
            logging.INFO if ok else logging.WARNING,
            request_id=req.id,
            x_request_id=req.external_id,
            remote_engine_id=params.get("remote_engine_id"),
            remote_request_id=params.get("remote_request_id"),
            blocks=len(local),
            bytes=nbytes,
            transport=transport,
            ok=ok,
            error=error,
            policy="fail" if self.sched.fail_on_kv_error else "recompute",
            ms=round((time.perf_counter() - start) * 1000, 3),
        )
        # What the pulled blocks cover (a producer may have held fewer tokens than asked).
        held = int(params.get("remote_num_tokens") or 0) or len(req.prompt)
        upto = min((skip + len(local)) * bs, held)
        finished = self.sched.kv_loaded(req.id, ok, error, upto)
        if finished is not None and finished.done:
            self._finished(finished)
        self.wake.set()

    async def _release_remote(
        self, params: dict[str, Any], external_id: str, reason: str, request_id: str | None = None
    ) -> None:
        """Free the producer's lease without pulling (vLLM notifies the producer likewise)."""
        released, error = await kv_release.release(params, self.pull_timeout)
        event(
            log,
            "kv_pull_skipped",
            logging.INFO if error is None else logging.WARNING,
            request_id=request_id,
            remote_request_id=params.get("remote_request_id"),
            x_request_id=external_id,
            reason=reason,
            released=released,
            release_error=error,
        )

    # --- requests ---------------------------------------------------------------------------
    def tokenize(self, p: Params) -> list[int]:
        if isinstance(p.prompt, list):
            bad = next((t for t in p.prompt if not 0 <= t < 2**31), None)
            if bad is not None:
                raise ApiError(400, f"Token id {bad} is out of vocabulary", "prompt")
            return list(p.prompt)
        chars = _prompt_chars(p)
        if chars > self.max_model_len * MAX_CHARS_PER_TOKEN:  # refused before tokenizing
            raise ApiError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your prompt has {chars} characters, more than that many tokens can hold.",
                "messages" if p.chat else "prompt",
            )
        try:
            return request_tokens(self.cfg.tokenizer, p.prompt, p.messages if p.chat else None)
        except ValueError as err:
            raise ApiError(400, str(err), "messages") from err

    def new_request(self, p: Params, prompt: list[int], base_id: str) -> Request:
        limit = self.max_model_len
        if len(prompt) >= limit or (p.max_tokens and len(prompt) + p.max_tokens > limit):
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, "
                f"you requested {len(prompt) + (p.max_tokens or 0)} tokens "
                f"({len(prompt)} in the messages, {p.max_tokens or 0} in the "
                "completion). Please reduce the length of the messages or "
                "completion.",
                "messages" if p.chat else "prompt",
            )
        if not prompt:
            raise ApiError(400, "The prompt is empty.", "prompt")
        kv = p.kv_transfer_params if self.cfg.kv_transfer else None
        if kv:
            check_kv_params(kv)
        prefix = "chatcmpl" if p.chat else "cmpl"
        req = Request(
            id=f"{prefix}-{base_id}-{next(self.ids)}",
            external_id=base_id,
            prompt=prompt,
            max_tokens=p.max_tokens or (limit - len(prompt)),
            arrival=asyncio.get_running_loop().time(),
            ignore_eos=p.ignore_eos,
            remote_decode=bool(kv and kv.get("do_remote_decode")),
            remote_prefill=kv if kv and kv.get("do_remote_prefill") else None,
        )
        if req.remote_decode:
            req.max_tokens = 1
        return req

    def submit(self, req: Request) -> asyncio.Queue[int | None]:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.queues[req.id] = queue
        self.sched.add(req)
        self.wake.set()
        return queue

    def forget(self, req: Request) -> None:
        self.queues.pop(req.id, None)
        if req.done:
            return
        answered = req.finish_reason is not None  # a stop string ended it in the handler
        unclaimed = req.remote_prefill is not None and req.scheduled_at is None
        self.sched.abort(req)
        if unclaimed and req.remote_prefill is not None:
            self.release_unclaimed(
                req.remote_prefill, req.external_id, "aborted before admission", req.id
            )
        if not answered:  # the client went away first
            self.metrics.success.labels(**self.metrics.values, finished_reason="abort").inc()
            event(
                log,
                "request_aborted",
                request_id=req.id,
                x_request_id=req.external_id,
                completion_tokens=len(req.output),
            )
        self._observe()
        self.wake.set()  # its blocks may let a waiting request in

    def producer_params(self, req: Request) -> dict[str, Any]:
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": self._prompt_blocks(req),
            "remote_engine_id": self.engine_id,
            "remote_request_id": req.id,
            "remote_host": self.cfg.side_channel_host,
            "remote_port": self.cfg.side_channel_port,
            "remote_num_tokens": len(req.prompt),
            "tp_size": self.cfg.tp_size,
        }

    def record_finish(self, req: Request, now: float, token_times: list[float]) -> None:
        m, v = self.metrics, self.metrics.values
        if req.first_token_at is not None:
            m.ttft.observe(max(token_times[0] - req.arrival, 0) if token_times else 0)
        for a, b in itertools.pairwise(token_times):
            m.itl.observe(b - a)
        if len(token_times) > 1:  # per request, the mean gap (vLLM's newer definition)
            m.tpot.observe((token_times[-1] - token_times[0]) / (len(token_times) - 1))
        m.e2e.observe(now - req.arrival)
        if req.scheduled_at is not None:
            m.queue_time.observe(req.scheduled_at - req.arrival)
            if token_times:
                m.prefill_time.observe(max(token_times[0] - req.scheduled_at, 0))
                m.decode_time.observe(token_times[-1] - token_times[0])
        m.success.labels(**v, finished_reason=req.finish_reason or "abort").inc()
        m.prefix_queries.inc(len(req.prompt))
        m.prefix_hits.inc(req.cached_tokens)


# No tokenizer's token spans more text than this (long BPE merges are ~16 bytes): a prompt
# longer than max_model_len tokens of it is too long whatever its tokens, and a 10 MB prompt
# is refused at once instead of after seconds of tokenizing that stall every other request.
MAX_CHARS_PER_TOKEN = 64


def _prompt_chars(p: Params) -> int:
    if p.chat:
        return sum(len(str(m.get("content") or "")) for m in p.messages or [])
    return len(p.prompt) if isinstance(p.prompt, str) else 0
