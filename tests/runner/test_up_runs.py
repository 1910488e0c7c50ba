"""Runs in one state folder stay apart: the trace shows this run's requests only, and the
previous run's stay readable with --run."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
from upkit import Service, chat

from pdserve.process import wait_until


def ask(service: Service, rid: str) -> None:
    api = openai.OpenAI(base_url=f"{service.url}/v1", api_key="none", max_retries=0, timeout=60)
    api.chat.completions.create(
        model="smollm2",
        messages=chat("Name a river."),
        max_tokens=4,
        extra_headers={"x-request-id": rid},
    )


def traced(service: Service, *args: str) -> list[str]:
    out = service.cli("logs", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["request_id"] for line in out.stdout.splitlines()]


def wait_traced(service: Service, rid: str) -> None:
    """The sidecar logs once its answer is sent: its line may land just after the client."""
    wait_until(lambda: rid in traced(service), 30, f"request {rid} in the trace", interval=0.1)


def test_a_second_up_traces_only_its_own_requests(up: Callable[..., Service]) -> None:
    first = up("--engine", "sim")
    ask(first, "run-one")
    wait_traced(first, "run-one")
    assert first.cli("down").returncode == 0
    second = up("--engine", "sim", state=first.state_dir)
    ask(second, "run-two")
    wait_traced(second, "run-two")
    assert traced(second) == ["run-two"]
    assert traced(second, "--run", "previous") == ["run-one"]
    bad = second.cli("logs", "--run", "7")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--run 7: no such earlier run" in bad.stderr
