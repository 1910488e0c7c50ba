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


def test_the_gateways_timeouts_are_flags_of_up(up: Callable[..., Service]) -> None:
    service = up("--engine", "sim", "--route-timeout", "90s", "--stream-idle-timeout", "20s")
    boot = json.loads((service.state_dir / "envoy.json").read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert {(r["route"]["timeout"], r["route"]["idle_timeout"]) for r in routes} == {("90s", "20s")}
    assert hcm["typed_config"]["stream_idle_timeout"] == "20s"


def test_a_bad_gateway_timeout_is_one_line_exit_2(tmp_path) -> None:
    from upkit import EXAMPLE, pdserve

    done = pdserve("up", str(EXAMPLE), "--engine", "sim", "--route-timeout", "soon",
                   "--state-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 2 and "--route-timeout" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr
