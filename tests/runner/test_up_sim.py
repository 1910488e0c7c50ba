"""`pdserve up --engine sim` end to end: gateway, EPP, sidecar, P/D over NIXL, scaling, down."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import psutil
from upkit import EXAMPLE, Service, all_dead, chat, pdserve

from pdserve import endpoints, promtext
from pdserve.process import wait_until
from pdserve.wire import ROLE_LABEL
from testkit import metric_in

MODEL = "smollm2"
CHAT = chat("What is the capital of France?")


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=60)


def test_serves_openai_at_v1_and_route_path(up: Callable[..., Service]) -> None:
    service = up("--engine", "sim")
    route = service.state()["summary"]["route"]
    assert route.startswith(service.url + "/") and route.endswith("/v1")
    for base in (f"{service.url}/v1", route):
        rid = f"test-{uuid.uuid4().hex[:8]}"
        reply = client(base).chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=8, extra_headers={"x-request-id": rid}
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens == 8
        stream = client(base).chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=8, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    models = httpx.get(f"{service.url}/v1/models", timeout=30)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == MODEL

    # The trace joins the EPP's and the sidecar's logs of the last request by its id (the
    # sidecar logs once its answer is sent, so its line may land just after the client is done).
    section = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        trace = service.cli("logs").stdout
        section = trace.split(f"request {rid}", 1)[-1].split("\nrequest ", 1)[0]
        if "epp" in section and "sidecar-0" in section:
            break
        time.sleep(0.1)
    assert "epp" in section and "sidecar-0" in section, trace
    assert "outcome=pd" in trace and "kv_handle=" in trace, trace
    # The decode engine pulled the prompt's KV from the prefill engine once, over NIXL: the
    # EPP then knows decode-0 holds the prompt and sends the repeats to it alone.
    decode = service.component("decode-0")["port"]
    metrics = httpx.get(f"http://127.0.0.1:{decode}/metrics").text
    pulls = {
        (s.labels["transport"], s.labels["outcome"]): s.value
        for s in promtext.samples(metrics, {"pdserve_sim:kv_pulls_total"})
    }
    assert pulls == {("nixl", "ok"): 1.0}, pulls


def test_status_and_component_logs(up: Callable[..., Service]) -> None:
    service = up("--engine", "sim")
    status = service.cli("status")
    assert status.returncode == 0, status.stderr
    for name in ("envoy", "epp", "prefill-0", "decode-0", "sidecar-0"):
        assert name in status.stdout
    assert service.cli("logs", "epp").stdout.strip()
    missing = service.cli("logs", "nope")
    assert missing.returncode == 2 and "no log for 'nope'" in missing.stderr


def test_scale_under_load_loses_no_request(up: Callable[..., Service]) -> None:
    service = up("--engine", "sim")
    failures: list[str] = []
    done = threading.Event()
    counts = {"ok": 0}

    def load() -> None:
        api = client(f"{service.url}/v1")
        while not done.is_set():
            try:
                stream = api.chat.completions.create(
                    model=MODEL, messages=CHAT, max_tokens=16, stream=True
                )
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                assert text, "empty answer"
                counts["ok"] += 1
            except Exception as err:
                failures.append(repr(err))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for pool, n in (("decode", 2), ("prefill", 2), ("decode", 1), ("prefill", 1)):
            before = counts["ok"]
            out = service.cli("scale", pool, str(n))
            assert out.returncode == 0, out.stderr
            roles = [e.labels[ROLE_LABEL] for e in _endpoints(service)]
            assert roles.count(pool) == n, roles
            assert service.state()["summary"]["pools"][pool] == n
            _wait_for_more(counts, before + 8, failures)
    finally:
        done.set()
        for w in workers:
            w.join(timeout=120)
    assert not failures, failures[:5]
    assert counts["ok"] > 30


def test_down_stops_everything(up: Callable[..., Service]) -> None:
    service = up("--engine", "sim")
    pids = service.pids()
    out = service.cli("down")
    assert out.returncode == 0, out.stderr
    assert all_dead(pids)
    assert service.cli("status").returncode == 1
    again = service.cli("scale", "decode", "2")
    assert again.returncode == 2 and "no service is running" in again.stderr


def _endpoints(service: Service) -> list[endpoints.Entry]:
    return endpoints.read(service.state_dir / "endpoints.json")


def _wait_for_more(counts: dict[str, int], target: int, failures: list[str]) -> None:
    """Requests keep completing on the new topology (bounded by the failure list)."""
    deadline = time.monotonic() + 60
    while counts["ok"] < target and not failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts["ok"] >= target or failures, "requests stopped completing after scaling"


PRECISE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
  parameters: {modelName: hf-repo/model-name}
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig: {blockSize: 16}
    kvEventsConfig: {zmqEndpoint: "tcp://*:5557"}
- type: prefix-cache-scorer
  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""


def test_precise_prefix_routing_follows_the_engines_kv_events(
    up: Callable[..., Service], tmp_path: Path
) -> None:
    """Two aggregated sim engines and a precise-prefix config written for a cluster: the
    runner feeds the engines' KV events to the EPP on loopback (not tcp://*:5557), hashed
    and tokenized alike, so repeats of a prompt go to the engine that cached it."""
    import yaml

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"].pop("prefill")
    doc["spec"]["replicas"] = 2
    doc["spec"]["router"]["scheduler"] = {"config": {"inline": yaml.safe_load(PRECISE)}}
    manifest = tmp_path / "precise.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    service = up("--engine", "sim", manifest=manifest)
    epp = psutil.Process(service.component("epp")["pid"]).cmdline()
    assert "tcp://*:5557" not in (service.state_dir / "epp-config.yaml").read_text()
    metrics = f"http://127.0.0.1:{epp[epp.index('--metrics-port') + 1]}/metrics"
    api = client(f"{service.url}/v1")
    prompt = "The lighthouse keeper counted ships along the northern coast. " * 10
    api.completions.create(model=MODEL, prompt=prompt, max_tokens=1)
    wait_until(
        lambda: metric_in(httpx.get(metrics).text, "inference_extension_prefix_indexer_size") > 0,
        30,
        "the EPP to hear the engine's KV events",
    )
    for i in range(6):
        api.completions.create(model=MODEL, prompt=f"{prompt} Ship {i}.", max_tokens=1)
    hits = []
    for name in ("engine-0", "engine-1"):
        port = service.component(name)["port"]
        page = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        hits.append(metric_in(page, "vllm:prefix_cache_hits_total"))
    assert sorted(hits)[0] == 0 and sorted(hits)[1] > 0, hits  # every repeat on one engine


SHARED_PREFIX = """\
api: chat
arrival: {process: constant, rate: 5}
shared_prefix: {groups: 1, prefix_tokens: 120, suffix_tokens: {dist: uniform, min: 4, max: 12}}
output_tokens: {dist: uniform, min: 4, max: 8}
"""


def test_bench_trace_dir_reports_each_requests_routing(
    up: Callable[..., Service], tmp_path: Path
) -> None:
    """The first request's long prompt is disaggregated (prefill, then a KV pull); the EPP
    then knows decode-0 holds the shared prefix, so the rest are decode-only cache hits."""
    service = up("--engine", "sim")
    workload = tmp_path / "shared.yaml"
    workload.write_text(SHARED_PREFIX)
    out = tmp_path / "report.json"
    done = pdserve(
        "bench",
        *("--url", service.url, "--model", MODEL, "--workload", str(workload)),
        *("--duration", "2", "--output", str(out), "--trace-dir", str(service.state_dir)),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    trace = json.loads(out.read_text())["trace"]
    rows, summary = trace["requests"], trace["summary"]
    assert len(rows) == summary["traced"] == 10 and summary["untraced"] == 0, rows
    pd = [r for r in rows if r["pd"] == "pd"]
    local = [r for r in rows if r["pd"] == "decode-only"]
    assert pd and local and len(pd) + len(local) == 10, rows
    assert rows[0] in pd
    for r in pd:
        assert r["reason"].startswith("disaggregated") and r["outcome"] == "pd", r
        assert r["prefill_ms"] > 0 and r["kv_pull_ms"] > 0 and r["prompt_tokens"] > 120, r
    for r in local:
        assert r["reason"].startswith("decode-only") and r["outcome"] == "decode-only", r
        assert r["prefill_ms"] is None and r["kv_pull_ms"] is None, r
        assert r["cached_tokens"] >= 112, r  # the prefix's whole blocks, on decode-0
    assert rows[0]["cached_tokens"] == 0
    assert summary["pd"] == len(pd) and 0 < summary["cache_hit_rate"] < 1
    assert summary["kv_pull_ms_p50"] > 0
    assert f"trace    10 requests: {len(pd)} P/D, {len(local)} decode-only" in done.stdout
