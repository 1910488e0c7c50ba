"""Precise prefix routing against real vLLM CPU engines: the EPP's keys are the engine's.

Two engines, one per hashing vLLM offers here (the default sha256 and sha256_cbor), each
publishing KV events to the EPP's own subscriber and precise producer. After a prompt has
been served, a request sharing its prefix is looked up: the producer must find it on that
engine in exactly the blocks vLLM then reports cached (usage.prompt_tokens_details).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from pdserve.engines import model, vllm
from pdserve.epp import kv_events
from pdserve.epp.framework import make
from pdserve.epp.plugins.prefix import PrecisePrefixProducer
from pdserve.epp.request import parse
from pdserve.process import free_port
from testkit import Spawn

pytestmark = pytest.mark.slow

BLOCK = vllm.CPU_BLOCK_MULTIPLE  # the smallest block vLLM's CPU attention takes
NAME = "smollm2"
ALGOS = ("sha256", "sha256_cbor")
STORY = "The lighthouse keeper counted ships along the northern coast every night. " * 12


def producer(algo: str, model_dir: Path) -> PrecisePrefixProducer:
    out = make(
        "precise-prefix-cache-producer",
        f"precise-{algo}",
        {"tokenProcessorConfig": {"blockSize": BLOCK, "hashAlgo": algo}},
    )
    assert isinstance(out, PrecisePrefixProducer)
    out.bind({"tokens": make("token-producer", "tokens", {"modelName": str(model_dir)})}, [])
    return out


def request(body: dict[str, Any]) -> Any:
    return parse({}, json.dumps(body).encode(), None)


async def stored(p: PrecisePrefixProducer, blocks: int) -> None:
    """Until the engine's events have told the producer of at least `blocks` blocks."""
    for _ in range(600):
        if len(p.holders) >= blocks:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{p.name}: {len(p.holders)} blocks announced, expected {blocks}")


async def cached_tokens(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> int:
    resp = await client.post(url, json={**body, "max_tokens": 1, "temperature": 0})
    resp.raise_for_status()
    details = resp.json()["usage"].get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


@pytest.mark.timeout(1800)  # two engine start-ups at once on a busy machine
async def test_the_precise_producer_sees_what_vllm_cached(spawn: Spawn) -> None:
    model_dir = model.resolve("builtin://smollm2-135m-instruct")
    engines, producers, tasks = {}, {}, []
    sockets = Path(tempfile.mkdtemp(prefix="kv-", dir="/tmp"))
    for core, algo in enumerate(ALGOS):
        port, events = free_port(), f"ipc://{sockets}/{algo}"
        p = producers[algo] = producer(algo, model_dir)
        # vLLM binds an ipc:// endpoint and the EPP's subscriber connects to it. (An engine
        # told to connect to a tcp:// SUB the EPP binds, llm-d's way, established the
        # connection here but delivered no batch; the sim engine does deliver that way.)
        tasks.append(asyncio.create_task(kv_events.subscribe(p, events, bind=False)))
        config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": events,
            "topic": f"kv@engine-{algo}@{NAME}",
        }
        args = ["--kv-events-config", json.dumps(config), "--block-size", str(BLOCK)]
        args += ["--prefix-caching-hash-algo", algo, "--enable-prompt-tokens-details"]
        cmd = vllm.command(model_dir, NAME, port, args=args, cores=str(core))
        # vLLM's default NONE_HASH seed, as the producer's: no PYTHONHASHSEED of ours leaks in
        env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"} | cmd.env
        engines[algo] = (spawn(f"vllm-{algo}", cmd.argv, env), port)
    try:
        for proc, port in engines.values():
            await asyncio.to_thread(proc.wait_http, f"http://127.0.0.1:{port}/health", 900)
        async with httpx.AsyncClient(timeout=300) as client:
            for algo, (_, port) in engines.items():
                await check_engine(client, f"http://127.0.0.1:{port}", algo, producers[algo])
    finally:
        for task in tasks:
            task.cancel()
        shutil.rmtree(sockets, ignore_errors=True)


async def check_engine(
    client: httpx.AsyncClient, base: str, algo: str, p: PrecisePrefixProducer
) -> None:
    pod = f"engine-{algo}"
    first = {"model": NAME, "prompt": STORY}
    assert await cached_tokens(client, f"{base}/v1/completions", first) == 0
    full_blocks = len(p.request_tokens(request(first))) // BLOCK
    await stored(p, full_blocks)
    second = {"model": NAME, "prompt": STORY + " Then the fog rolled in from the sea."}
    match = p.lookup(request(second))
    assert match.matched.get(pod, 0) >= full_blocks - 1, (algo, match.matched, full_blocks)
    vllm_cached = await cached_tokens(client, f"{base}/v1/completions", second)
    assert vllm_cached > 0 and match.matched[pod] * BLOCK == vllm_cached, (algo, vllm_cached)
    # Chat: the model's own template, as vLLM renders it, gives the same keys.
    chat = {"model": NAME, "messages": [{"role": "user", "content": STORY}]}
    await cached_tokens(client, f"{base}/v1/chat/completions", chat)
    chat_blocks = len(p.request_tokens(request(chat))) // BLOCK
    follow = {**chat, "messages": [*chat["messages"], {"role": "assistant", "content": "Yes."}]}
    for _ in range(600):  # until the chat prompt's blocks are announced
        if p.lookup(request(follow)).matched.get(pod, 0) >= chat_blocks - 1:
            break
        await asyncio.sleep(0.05)
    match = p.lookup(request(follow))
    vllm_cached = await cached_tokens(client, f"{base}/v1/chat/completions", follow)
    assert vllm_cached > 0 and match.matched.get(pod, 0) * BLOCK == vllm_cached, (
        algo,
        vllm_cached,
        match.matched,
    )
