"""Issue 13: memory returns to baseline after large bodies. Through the gateway of `pdserve
up --engine sim`: prompts of ~1 MiB past the model's context, a deeply nested body, bodies of
~7 MiB and over 8 MiB are each refused in vLLM's error shape within seconds;
the service goes on serving, and the RSS of every long-lived process (Envoy, the EPP, the
sidecar, the engines) comes back near what it was before them.

The probe behind the issue saw engines keep ~1.5 GB after one 10 MB prompt (tokenized
whole); the engine now refuses such a prompt before tokenizing (docs/reliability.md,
"oversized input"), and this test is what keeps every hop from holding on to such bodies.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
from upkit import Service, chat

from pdserve import wire
from pdserve.engines.sim.engine import MAX_CHARS_PER_TOKEN
from testkit import vllm_error

MODEL = "smollm2"
MiB = 2**20
# `pdserve up` fails open, so its gateway sends bodies to the EPP BUFFERED, and Envoy buffers
# a body up to its default per-connection limit (1 MiB): a bigger one is Envoy's own 413
# (in the engines' shape, envoy.local_replies) before the EPP's 8 MiB limit is reached.
ENVOY_BUFFER = 2**20
QUICK = 10.0  # seconds: a refusal of any of these bodies takes far less (no tokenizing)


def test_rss_returns_to_baseline_after_large_bodies(shared_sim: Service) -> None:
    service = shared_sim
    with httpx.Client(base_url=service.url, timeout=60) as http:
        context = http.get("/v1/models").json()["data"][0]["max_model_len"]
        assert context * MAX_CHARS_PER_TOKEN < 6 * MiB  # refused before tokenizing
        for _ in range(2):
            _ordinary(http)
        trees = _trees(service)
        baseline = {name: _rss(pids) for name, pids in trees.items()}
        with _Peaks(trees) as peaks:
            # Under Envoy's 1 MiB buffer, past the context: the engine's (or sidecar's) 400.
            for i in range(5):
                _refused(http, _past_context(i), 400, "maximum context length")
            _refused(http, _deeply_nested(), 400, "nested too deeply")  # the EPP's
            # ~7 MiB (under the EPP's 8 MiB) and past 8 MiB: Envoy's own 413 (see ENVOY_BUFFER).
            for size in [wire.MAX_REQUEST_BODY - MiB] * 5 + [wire.MAX_REQUEST_BODY + MiB] * 3:
                error = _refused(http, _prompt_body("/v1/completions", size), 413, None)
                assert error["message"] == "Payload Too Large"  # Envoy's, not the EPP's
        for _ in range(3):
            _ordinary(http)
    # Every process is the one measured before: none was restarted (a new one starts small).
    assert {name: pids[0] for name, pids in _trees(service).items()} == {
        name: pids[0] for name, pids in trees.items()
    }

    # The bound: baseline + 64 MiB, or +25% of it if that is more: what an allocator may
    # keep of freed memory (glibc's heap after its mmap threshold rises to a freed block's
    # size) while nothing is held. Envoy takes in ~68 MiB of bodies here (5 x 7 + 3 x 9 + 6):
    # holding them would be over it. Behind Envoy only the ~6 MiB under its buffer arrive
    # (the EPP parses them, the sidecar refuses them), so for those the bound is loose: it
    # catches growth like the probe's engine (~1.5 GB after one 10 MB prompt), not a copy of
    # each body kept. A run on 2026-12-02 saw each process within +6 MiB of its baseline.
    def bound(name: str) -> int:
        return max(baseline[name] + 64 * MiB, baseline[name] * 5 // 4)

    deadline = time.monotonic() + 10  # the last answers' buffers are freed as tasks end
    while True:
        after = {name: _rss(pids) for name, pids in trees.items()}
        over = [name for name in trees if after[name] > bound(name)]
        if not over or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    table = "\n".join(
        f"{name:>12}: baseline {baseline[name] / MiB:7.1f} MiB, peak {peaks[name] / MiB:7.1f}"
        f" MiB, after {after[name] / MiB:7.1f} MiB (bound {bound(name) / MiB:.1f})"
        for name in sorted(trees)
    )
    print(f"\nRSS of each component (with its children):\n{table}")
    assert not over, f"RSS not back near its baseline: {over}\n{table}"


def _ordinary(http: httpx.Client) -> None:
    """One P/D chat (long enough for the EPP to disaggregate), one decode-only, one
    completion: each a 200 with its 4 tokens."""
    first = f"[{uuid.uuid4().hex}] "
    long = chat("What is the capital of Peru?")
    long[0]["content"] = first + long[0]["content"]
    bodies = [
        ("/v1/chat/completions", {"model": MODEL, "messages": long, "max_tokens": 4}),
        ("/v1/chat/completions", {"model": MODEL, "messages": chat("Hi")[1:], "max_tokens": 4}),
        ("/v1/completions", {"model": MODEL, "prompt": "The capital of Peru is", "max_tokens": 4}),
    ]
    for path, body in bodies:
        resp = http.post(path, json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 4


def _prompt_body(path: str, size: int) -> tuple[str, bytes]:
    """A body of `size` bytes whose prompt (or one message) is plain words, no escapes."""
    start = f'{{"model": "{MODEL}", "max_tokens": 4, '
    if path == "/v1/chat/completions":
        before, after = start + '"messages": [{"role": "user", "content": "', '"}]}'
    else:
        before, after = start + '"prompt": "', '"}'
    before += f"[{uuid.uuid4().hex}] "  # new to every prefix cache
    fill = size - len(before) - len(after)
    words = "the capital of peru is lima "
    body = (before + (words * (fill // len(words) + 1))[:fill] + after).encode()
    assert len(body) == size and isinstance(json.loads(body), dict)
    return path, body


def _past_context(i: int) -> tuple[str, bytes]:
    """Just under Envoy's buffer: chats and completions in turn."""
    path = "/v1/chat/completions" if i % 2 == 0 else "/v1/completions"
    return _prompt_body(path, ENVOY_BUFFER - 4096 * (i + 1))


def _deeply_nested() -> tuple[str, bytes]:
    """A prompt of lists nested ~490 k deep (just under Envoy's buffer): json.loads stops at
    its recursion limit."""
    depth = ENVOY_BUFFER // 2 - 4096
    body = b'{"model": "%s", "prompt": ' % MODEL.encode() + b"[" * depth + b"]" * depth + b"}"
    assert len(body) < ENVOY_BUFFER
    return "/v1/completions", body


def _refused(
    http: httpx.Client, request: tuple[str, bytes], status: int, says: str | None
) -> dict[str, object]:
    path, body = request
    started = time.monotonic()
    resp = http.post(path, content=body, headers={"content-type": "application/json"})
    took = time.monotonic() - started
    error = vllm_error(resp, status)
    assert says is None or says in str(error["message"]), error
    assert took < QUICK, f"{len(body)} bytes to {path}: {status} after {took:.1f} s"
    return error


def _trees(service: Service) -> dict[str, list[int]]:
    """Each component of the state file: its pid, then its descendants' (a vLLM engine's
    worker, say; the sim's processes have none)."""
    trees: dict[str, list[int]] = {}
    for record in service.state()["components"]:
        if record.get("pid"):
            root = psutil.Process(record["pid"])
            trees[record["name"]] = [root.pid, *(c.pid for c in root.children(recursive=True))]
    return trees


def _rss(pids: list[int]) -> int:
    """VmRSS (/proc/PID/status) summed over the processes, in bytes."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        total += int(line.split()[1]) * 1024
    return total


class _Peaks(dict[str, int]):
    """The highest RSS of each component seen while the block runs, sampled every 50 ms
    in a thread (what the figures report; the assertion is on the RSS after)."""

    def __init__(self, trees: dict[str, list[int]]) -> None:
        super().__init__({name: _rss(pids) for name, pids in trees.items()})
        self.trees = trees
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            for name, pids in self.trees.items():
                self[name] = max(self[name], _rss(pids))

    def __enter__(self) -> _Peaks:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
