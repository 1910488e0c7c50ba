"""The example with real vLLM CPU engines and the real SmolLM2: P/D through the gateway.

One P/D pair (a core each) serves chat through Envoy, the EPP and the decode
sidecar; then, with the pair stopped (two vLLM engines at most on this
machine), one aggregated engine answers the same prompts: greedy outputs must
be identical, since the decode engine only skipped the prefill it pulled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from upkit import Service, chat

from pdserve.engines import model, placement, venv, vllm
from testkit import Spawn, metric

pytestmark = pytest.mark.slow

MODEL = "smollm2"
PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Which ocean lies between Europe and America?",
]


def greedy(base_url: str, prompt: str, stream: bool = False) -> str:
    """Each prompt gets its own opening ("Round N."), so no two share a cached prefix: the
    EPP disaggregates every first ask, and repeats of one find it cached on the decode pod."""
    api = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)
    messages = chat(prompt)
    messages[0]["content"] = f"Round {PROMPTS.index(prompt) + 1}. {messages[0]['content']}"
    if not stream:
        reply = api.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=32, temperature=0
        )
        return reply.choices[0].message.content or ""
    chunks = api.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=32, temperature=0, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def affinities(pid: int) -> set[frozenset[int]]:
    """The distinct CPU sets of every thread under `pid` (threads may come and go)."""
    out = set()
    for proc in placement.process_tree(pid):
        for tid in placement.threads(proc):
            with contextlib.suppress(ProcessLookupError):
                out.add(frozenset(os.sched_getaffinity(tid)))
    return out


def check_trace(service: Service) -> None:
    """The first P/D request's trace: the EPP's choice and why, prefill-0, the KV handle
    whole, decode-0's own view (its request and NIXL lines), and the outcome."""
    rows = [json.loads(line) for line in service.cli("logs", "--json").stdout.splitlines()]
    first = rows[0]
    sidecar = next(e for e in first["events"] if e["component"] == "sidecar")
    handle = sidecar["kv_handle"]
    assert handle["blocks"] >= 1 and handle["tokens"] > 0, handle
    text = service.cli("logs", "--last", "0").stdout
    block = text.split(f"request {first['request_id']}", 1)[1].split("\nrequest ", 1)[0]
    flat = " ".join(line.strip() for line in block.splitlines())
    assert block.splitlines()[0].endswith("-> pd 200"), block
    assert re.search(r"reason=disaggregated: \d+ uncached characters >= threshold 256", flat)
    assert "decode=decode-0 prefill=prefill-0" in flat, block
    assert "prefill_target=prefill-0" in flat, block
    whole = "".join(line.strip() for line in block.splitlines()).replace(" ", "")
    assert json.dumps(handle, separators=(",", ":")).replace(" ", "") in whole, block
    sources = [
        line.split()[0]
        for line in block.splitlines()[1:]
        if line.startswith("  ") and not line.startswith("   ")
    ]
    assert {"epp", "sidecar-0", "prefill-0", "decode-0"} <= set(sources), sources
    assert f"Received request chatcmpl-{first['request_id']}" in flat, block
    assert "start_load_kv for request chatcmpl-" in flat, block  # decode-0 pulled over NIXL
    assert "127.0.0.1:" not in block.split("kv_handle=")[0], block  # components by name


@pytest.mark.timeout(2400)  # two engine start-ups of up to 900 s each on a busy machine
def test_pd_with_vllm_equals_aggregated(
    up: Callable[..., Service], spawn: Spawn, port: Callable[[], int], tmp_path: Path
) -> None:
    assert venv.find() is not None, "vLLM engines are installed by `make engines`"
    service = up("--engine", "vllm", timeout=900)
    # Each engine's whole process tree is on a core of its own, and NIXL's spinning progress
    # thread was demoted (engines/placement.py): vLLM had put both models on the last core.
    cores = {}
    for name in ("prefill-0", "decode-0"):
        row = service.component(name)
        assert re.search(r"[1-9]\d* pollers demoted", row["detail"]), row
        allowed = affinities(row["pid"])
        assert len(allowed) == 1, (name, allowed)
        cores[name] = allowed.pop()
    assert cores["prefill-0"] != cores["decode-0"]
    base = f"{service.url}/v1"
    sidecar = f"http://127.0.0.1:{service.component('sidecar-0')['port']}"

    def pd_count() -> float:
        return metric(sidecar, "pdserve_sidecar_requests_total", outcome="pd")

    pd_answers = []
    for prompt in PROMPTS:  # every prompt's first ask goes through P/D
        before = pd_count()
        pd_answers.append(greedy(base, prompt))
        assert pd_count() == before + 1, prompt
    answer = pd_answers[0]
    assert "paris" in answer.lower(), answer
    assert greedy(base, PROMPTS[0], stream=True) == answer
    assert "paris" in greedy(service.state()["summary"]["route"], PROMPTS[0]).lower()

    # The decode engine pulled each prompt's KV cache through NIXL from the prefill engine.
    decode = f"http://127.0.0.1:{service.component('decode-0')['port']}"
    prefill = f"http://127.0.0.1:{service.component('prefill-0')['port']}"
    assert metric(decode, "vllm:nixl_xfer_time_seconds_count") >= len(PROMPTS)
    assert metric(prefill, "vllm:prompt_tokens_total") > 0
    check_trace(service)

    out = service.cli("down", timeout=300)
    assert out.returncode == 0, out.stderr

    # One aggregated engine on both cores, same model folder, same prompts.
    model_dir = model.resolve("builtin://smollm2-135m-instruct")
    engine_port = port()
    cmd = vllm.command(model_dir, MODEL, engine_port, cores="0-1")
    engine = spawn("aggregated", cmd.argv, env={**os.environ, **cmd.env})
    engine.wait_http(f"http://127.0.0.1:{engine_port}/health", timeout=900)
    alone = [greedy(f"http://127.0.0.1:{engine_port}/v1", p) for p in PROMPTS]
    assert alone == pd_answers
    assert httpx.get(f"http://127.0.0.1:{engine_port}/v1/models").status_code == 200
