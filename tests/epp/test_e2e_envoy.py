"""Real Envoy + `pdserve epp` + two prefill and two decode sim engines behind sidecars."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdserve.epp import envoy
from pdserve.process import ManagedProcess, free_port, wait_tcp
from testkit import PDSERVE, metric, post_until

KV = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
CONFIG = """
plugins:
  - type: pd-profile-handler
    parameters: {threshold: 200, hashBlockSize: 64}
  - type: prefill-header-handler
  - type: prefill-filter
  - type: decode-filter
  - type: prefix-cache-scorer
  - type: load-aware-scorer
    parameters: {threshold: 16}
schedulingProfiles:
  - name: prefill
    plugins: [{pluginRef: prefill-filter}, {pluginRef: load-aware-scorer}]
  - name: decode
    plugins:
      - pluginRef: decode-filter
      - {pluginRef: prefix-cache-scorer, weight: 2}
      - {pluginRef: load-aware-scorer, weight: 1}
"""


@dataclass
class Cluster:
    tmp: Path
    procs: list[ManagedProcess] = field(default_factory=list)
    prefill: list[int] = field(default_factory=list)  # engine ports
    decode: list[int] = field(default_factory=list)  # engine ports
    sidecars: list[int] = field(default_factory=list)
    gateway: int = 0
    admin: str = ""

    def start(self, name: str, argv: list[str], health: str | None = None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.tmp / f"{name}.log", env=dict(os.environ)).start()
        self.procs.append(proc)
        if health:
            proc.wait_http(health, timeout=60)
        return proc

    def sim(self, name: str, *extra: str) -> int:
        port = free_port()
        self.start(
            name,
            [
                *PDSERVE,
                "sim-engine",
                "--port",
                str(port),
                "--served-model-name",
                "sim",
                "--kv-transfer-config",
                KV,
                *extra,
            ],
            f"http://127.0.0.1:{port}/health",
        )
        return port

    def gateway_up(
        self, endpoints: str, config: str, pool: Path | None = None, *epp_args: str
    ) -> None:
        """`pool`: the EDS file of the decode endpoints, for the override-host cluster."""
        grpc, health, metrics, admin = free_port(), free_port(), free_port(), free_port()
        epp = self.start(
            "epp",
            [
                *PDSERVE,
                "epp",
                "--host",
                "127.0.0.1",
                "--config-text",
                config,
                "--endpoints",
                endpoints,
                "--grpc-port",
                str(grpc),
                "--grpc-health-port",
                str(health),
                "--metrics-port",
                str(metrics),
                *epp_args,
            ],
            None,
        )
        wait_tcp("127.0.0.1", grpc, 30, epp.check_alive)
        self.epp_metrics = f"http://127.0.0.1:{metrics}"
        epp.wait_http(f"{self.epp_metrics}/metrics", 30)
        self.gateway = free_port()
        cfg = self.tmp / "envoy.json"
        boot = envoy.bootstrap(self.gateway, grpc, admin, ["/ns/llm"], pool=pool)
        cfg.write_text(json.dumps(boot))
        self.admin = f"http://127.0.0.1:{admin}"
        gw = self.start(
            "envoy",
            [
                str(envoy.binary()),
                "-c",
                str(cfg),
                "--base-id",
                str(self.gateway),
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ],
        )
        gw.wait_http(f"{self.admin}/ready", 60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway}"

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop(5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("e2e"))
    try:
        slow = c.tmp / "slow.yaml"
        slow.write_text("max_num_seqs: 1\n")  # one running request: a queue forms quickly
        for i in range(2):
            c.prefill.append(c.sim(f"prefill{i}", "--zero-cost"))
        for i in range(2):
            port = c.sim(f"decode{i}", "--profile", str(slow))
            c.decode.append(port)
            side = free_port()
            c.start(
                f"sidecar{i}",
                [
                    *PDSERVE,
                    "sidecar",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(side),
                    "--vllm-port",
                    str(port),
                    "--secure-proxy=false",
                ],
                f"http://127.0.0.1:{side}/health",
            )
            c.sidecars.append(side)
        endpoints = ",".join(
            [f"127.0.0.1:{p}@prefill" for p in c.prefill]
            + [f"127.0.0.1:{p}@decode" for p in c.sidecars]
        )
        c.gateway_up(endpoints, CONFIG)
        yield c
    finally:
        c.stop()


def outcomes(c: Cluster, outcome: str) -> list[float]:
    return [
        metric(f"http://127.0.0.1:{s}", "pdserve_sidecar_requests_total", outcome=outcome)
        for s in c.sidecars
    ]


def prefilled(c: Cluster) -> float:
    """Requests the prefill engines have served: only the sidecars' prefill legs go there."""
    return sum(
        metric(f"http://127.0.0.1:{p}", "vllm:request_success_total", model_name="sim")
        for p in c.prefill
    )


def test_chat_and_completions_streamed_through_envoy_with_pd(cluster: Cluster) -> None:
    before, legs = sum(outcomes(cluster, "pd")), prefilled(cluster)
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="x", max_retries=0)
    long = "Disaggregated serving splits prefill from decode. " * 10
    chat = client.chat.completions.create(
        model="sim", max_tokens=6, stream=True, messages=[{"role": "user", "content": long}]
    )
    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    comp = client.completions.create(model="sim", prompt=long + " again", max_tokens=6, stream=True)
    assert "".join(c.choices[0].text for c in comp if c.choices)
    routed = httpx.post(
        f"{cluster.url}/ns/llm/v1/completions",
        json={"model": "sim", "prompt": "route path " * 40, "max_tokens": 2},
    )
    assert routed.status_code == 200
    # x-prefiller-host-port reached the decode sidecars: they ran the P/D path, each prefill
    # leg on a prefill engine the EPP named.
    assert sum(outcomes(cluster, "pd")) - before == 3
    assert prefilled(cluster) - legs == 3
    assert httpx.get(f"{cluster.url}/v1/models").json()["data"][0]["id"] == "sim"


def test_short_prompt_skips_prefill(cluster: Cluster) -> None:
    before = sum(outcomes(cluster, "decode-only"))
    r = httpx.post(
        f"{cluster.url}/v1/completions", json={"model": "sim", "prompt": "hi", "max_tokens": 2}
    )
    assert r.status_code == 200
    assert sum(outcomes(cluster, "decode-only")) - before == 1
    assert (
        metric(cluster.epp_metrics, "pdserve_epp_pd_decisions_total", decision="decode-only") >= 1
    )


def test_shared_prefix_lands_on_the_same_decode_pod(cluster: Cluster) -> None:
    prefix = "A long shared system prompt about KV caches and routing. " * 40
    before = [
        a + b
        for a, b in zip(outcomes(cluster, "pd"), outcomes(cluster, "decode-only"), strict=True)
    ]
    for i in range(6):
        r = httpx.post(
            f"{cluster.url}/v1/completions",
            json={"model": "sim", "prompt": f"{prefix} question {i}", "max_tokens": 1},
            timeout=30,
        )
        assert r.status_code == 200
    after = [
        a + b
        for a, b in zip(outcomes(cluster, "pd"), outcomes(cluster, "decode-only"), strict=True)
    ]
    deltas = sorted(a - b for a, b in zip(after, before, strict=True))
    assert deltas == [0, 6]


def epp_waiting(cluster: Cluster) -> float:
    """Requests waiting across the pool as the EPP last saw them (mean x fresh pods)."""
    mean = metric(cluster.epp_metrics, "inference_pool_average_queue_size")
    return mean * metric(cluster.epp_metrics, "inference_pool_ready_pods")


def test_load_shifts_traffic_away_from_a_busy_pod(cluster: Cluster) -> None:
    busy_engine, busy_sidecar = cluster.decode[0], cluster.sidecars[0]
    long = {"model": "sim", "prompt": "busy", "max_tokens": 400, "ignore_eos": True, "stream": True}
    streams = []
    with httpx.Client(timeout=60) as http:
        for _ in range(4):  # one runs, three wait (max_num_seqs 1)
            s = http.stream("POST", f"http://127.0.0.1:{busy_engine}/v1/completions", json=long)
            s.__enter__()
            streams.append(s)
        deadline = time.monotonic() + 10
        while metric(f"http://127.0.0.1:{busy_engine}", "vllm:num_requests_waiting") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while epp_waiting(cluster) < 3:  # the EPP's own view of the queue, not a fixed wait
            assert time.monotonic() < deadline, "the EPP never saw the queue"
            time.sleep(0.05)
        before = metric(f"http://127.0.0.1:{busy_sidecar}", "pdserve_sidecar_requests_total")
        for i in range(5):
            r = http.post(
                f"{cluster.url}/v1/completions",
                json={"model": "sim", "prompt": f"fresh {i} " * 5, "max_tokens": 1},
            )
            assert r.status_code == 200
        after = metric(f"http://127.0.0.1:{busy_sidecar}", "pdserve_sidecar_requests_total")
        for s in streams:
            s.__exit__(None, None, None)
    assert after == before  # every request went to the idle pod


def test_sheddable_is_shed_when_saturated_and_critical_is_not(tmp_path) -> None:
    c = Cluster(tmp_path)
    try:
        slow = tmp_path / "slow.yaml"
        slow.write_text("max_num_seqs: 1\n")
        port = c.sim("only", "--profile", str(slow))
        c.gateway_up(
            f"127.0.0.1:{port}@decode",
            "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: d, plugins: [{pluginRef: queue-scorer}]}]\n",
        )
        long = {
            "model": "sim",
            "prompt": "fill",
            "max_tokens": 2000,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.Client(timeout=60) as http:
            streams = []
            for _ in range(8):  # 1 running + 7 waiting > 5: saturated
                s = http.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=long)
                s.__enter__()
                streams.append(s)
            body = {"model": "sim", "prompt": "x", "max_tokens": 1}
            shed = {"x-gateway-inference-criticality": "Sheddable"}
            deadline = time.monotonic() + 15
            while metric(c.epp_metrics, "inference_pool_average_queue_size") <= 5:
                assert time.monotonic() < deadline, "the EPP never saw the queue"
                time.sleep(0.1)  # polling the EPP's view, not waiting blindly
            r = http.post(f"{c.url}/v1/completions", json=body, headers=shed, timeout=10)
            assert r.status_code == 429
            assert r.json()["error"] == {
                "message": "system saturated, sheddable request dropped",
                "type": "Too Many Requests",
                "param": None,
                "code": 429,
            }
            with http.stream(
                "POST",
                f"{c.url}/v1/completions",
                json={**body, "stream": True},
                headers={"x-gateway-inference-criticality": "Critical"},
            ) as crit:
                assert crit.status_code == 200
            for s in streams:
                s.__exit__(None, None, None)
    finally:
        c.stop()


def test_request_without_id_gets_one_that_reaches_the_sidecar(cluster: Cluster) -> None:
    r = httpx.post(
        f"{cluster.url}/v1/completions",
        json={"model": "sim", "prompt": "no id given " * 30, "max_tokens": 1},
    )
    assert r.status_code == 200
    epp_log = next(p for p in cluster.procs if p.name == "epp").log_path.read_text()
    decisions = [
        json.loads(line)
        for line in epp_log.splitlines()
        if '"event":"decision"' in line and "no id given" not in line
    ]
    rid = decisions[-1]["request_id"]
    sidecar_logs = "".join(
        p.log_path.read_text() for p in cluster.procs if p.name.startswith("sidecar")
    )
    assert f'"request_id":"{rid}"' in sidecar_logs
    # An id a header or log line cannot carry whole is replaced, and the new one travels on.
    bad = "two words\tand a tab"
    r = httpx.post(
        f"{cluster.url}/v1/completions",
        json={"model": "sim", "prompt": "an unfit id " * 30, "max_tokens": 1},
        headers={"x-request-id": bad},
    )
    assert r.status_code == 200
    epp_log = next(p for p in cluster.procs if p.name == "epp").log_path.read_text()
    line = next(x for x in reversed(epp_log.splitlines()) if '"event":"decision"' in x)
    rid = json.loads(line)["request_id"]
    assert rid != bad and str(uuid.UUID(rid)) == rid
    sidecar_logs = "".join(
        p.log_path.read_text() for p in cluster.procs if p.name.startswith("sidecar")
    )
    assert f'"request_id":"{rid}"' in sidecar_logs and "two words" not in sidecar_logs


def _until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """The watching filter reports without Envoy waiting for the EPP: poll for its effect."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_watching_filter_feeds_in_flight_and_output_tokens(cluster: Cluster) -> None:
    """Token counts of 20 and 48 fall in histogram buckets no other test here reaches
    through the gateway, so a late report of an earlier request cannot be mistaken."""
    epp = cluster.epp_metrics

    def in_bucket(low: str, high: str) -> float:
        name = "inference_model_output_tokens_bucket"
        return metric(epp, name, model_name="sim", le=high) - metric(
            epp, name, model_name="sim", le=low
        )

    def running() -> float:
        return metric(epp, "inference_model_running_requests", model_name="sim")

    assert in_bucket("8.0", "32.0") == in_bucket("32.0", "128.0") == 0
    whole = httpx.post(
        f"{cluster.url}/v1/completions",
        json={
            "model": "sim",
            "prompt": "count my tokens " * 20,
            "max_tokens": 20,
            "ignore_eos": True,
        },
    )
    assert whole.json()["usage"]["completion_tokens"] == 20
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="x", max_retries=0)
    chunks = client.chat.completions.create(
        model="sim",
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream and count " * 20}],
        extra_body={"ignore_eos": True},
    )
    assert next(iter(chunks)).choices
    _until(lambda: running() == 1, "the streaming request to count as in flight")
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [48]
    _until(lambda: in_bucket("8.0", "32.0") == 1, "the whole answer's 20 tokens")
    _until(lambda: in_bucket("32.0", "128.0") == 1, "the stream's 48 tokens")
    _until(lambda: running() == 0, "no request in flight")


def _envoy_alone(c: Cluster, **options: object) -> str:
    """An Envoy with the runner's bootstrap whose EPP port nothing listens on."""
    gateway, admin = free_port(), free_port()
    cfg = c.tmp / f"envoy-{gateway}.json"
    cfg.write_text(json.dumps(envoy.bootstrap(gateway, free_port(), admin, **options)))
    argv = [str(envoy.binary()), "-c", str(cfg), "--base-id", str(gateway)]
    c.start(f"envoy-{gateway}", [*argv, "--disable-hot-restart", "--log-level", "error"])
    c.procs[-1].wait_http(f"http://127.0.0.1:{admin}/ready", 60)
    return f"http://127.0.0.1:{gateway}"


def _vllm_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status and body["error"]["param"] is None
    return body["error"]


def test_envoys_own_answers_are_in_the_engines_error_shape(tmp_path: Path) -> None:
    """An EPP that is down was an empty 500 (now a 503 with a body), an unreachable engine a
    line of text."""
    c = Cluster(tmp_path)
    try:
        url = _envoy_alone(c)
        for resp in (
            httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=30),
            httpx.get(f"{url}/v1/models", timeout=30),
        ):
            error = _vllm_error(resp, 503)
            assert error["type"] == "ServiceUnavailableError"
            assert error["message"].startswith("the endpoint picker failed: ext_proc_error")
        plain = _envoy_alone(c, ext_proc=False)  # the destination comes from the client
        dest = {"x-gateway-destination-endpoint": f"127.0.0.1:{free_port()}"}
        resp = httpx.post(f"{plain}/v1/completions", json={}, headers=dest, timeout=30)
        error = _vllm_error(resp, 503)
        assert error["type"] == "ServiceUnavailableError"
        assert error["message"].startswith("upstream connect error")
    finally:
        c.stop()


def _stat(admin_url: str, name: str) -> int:
    text = httpx.get(f"{admin_url}/stats", params={"filter": f"^{name}$"}).text
    return int(text.split(":")[1]) if ":" in text else 0


def test_a_refused_connection_is_retried_once_on_the_same_endpoint(tmp_path: Path) -> None:
    """The route's retry policy acts, and shows its limit: the destination header is read
    again, not re-picked, so a dead endpoint refuses the retry too (2 connects, 1 retry)."""
    c = Cluster(tmp_path)
    try:
        gateway, admin = free_port(), free_port()
        cfg = tmp_path / "envoy-retry.json"
        cfg.write_text(json.dumps(envoy.bootstrap(gateway, free_port(), admin, ext_proc=False)))
        argv = [str(envoy.binary()), "-c", str(cfg), "--base-id", str(gateway)]
        c.start("envoy-retry", [*argv, "--disable-hot-restart", "--log-level", "error"])
        admin_url = f"http://127.0.0.1:{admin}"
        c.procs[-1].wait_http(f"{admin_url}/ready", 60)
        dest = {"x-gateway-destination-endpoint": f"127.0.0.1:{free_port()}"}
        url = f"http://127.0.0.1:{gateway}/v1/completions"
        resp = httpx.post(url, json={}, headers=dest, timeout=30)
        assert _vllm_error(resp, 503)["message"].startswith("upstream connect error")
        assert _stat(admin_url, "cluster.original_dst.upstream_rq_retry") == 1
        assert _stat(admin_url, "cluster.original_dst.upstream_cx_connect_fail") == 2
    finally:
        c.stop()


# One profile that follows the prefix: every request with the same prompt goes to one engine,
# so an engine the EPP picked is told apart from Envoy's round robin.
AFFINE = (
    "plugins: [{type: decode-filter}, {type: prefix-cache-scorer}]\n"
    "schedulingProfiles: [{name: d, plugins: [{pluginRef: decode-filter},"
    " {pluginRef: prefix-cache-scorer}]}]\n"
)
SHARED = {"model": "sim", "prompt": "the same long prompt about failover " * 8, "max_tokens": 4}


def _served(ports: list[int]) -> list[float]:
    return [
        metric(f"http://127.0.0.1:{p}", "vllm:request_success_total", model_name="sim")
        for p in ports
    ]


def _load(url: str, stop: threading.Event, clients: int = 8) -> list[int | str]:
    """`clients` posting until told to stop: every outcome (testkit.post_until)."""
    seen: list[int | str] = []
    threads = [
        threading.Thread(target=post_until, args=(url, SHARED, stop, seen)) for _ in range(clients)
    ]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(60)
    return seen


def _kill_under_load(c: Cluster, ports: list[int], hot: int) -> None:
    """Kill -9 the engine the EPP picks once it is serving the load; return once the EPP
    has seen it down and the survivor alone has served more."""
    served = _served(ports)[hot]
    _until(lambda: _served(ports)[hot] > served + 12, "the load to reach it", 60)
    victim = c.procs[hot]  # the engines were started first
    assert victim.popen is not None
    os.kill(victim.popen.pid, signal.SIGKILL)
    victim.popen.wait(10)
    ready = lambda: metric(c.epp_metrics, "inference_pool_ready_pods") == 1  # noqa: E731
    _until(ready, "the EPP to see it down", 60)
    survivor = [ports[1 - hot]]
    survived = _served(survivor)[0]
    _until(lambda: _served(survivor)[0] > survived + 12, "load on the survivor alone", 60)


def test_a_dead_engine_under_load_costs_no_request(tmp_path: Path) -> None:
    """Two engines behind the override-host pool cluster, the EPP scraping each second: the
    engine it picks is the one that serves, and once that one is killed (-9) under load
    every request it was sent or had taken goes to the other on Envoy's one retry, with no
    5xx, until the EPP's next scrape takes it out of the choice."""
    c = Cluster(tmp_path)
    try:
        ports = [c.sim(f"decode{i}") for i in range(2)]
        eds = tmp_path / "pool-eds.json"
        eds.write_text(json.dumps(envoy.eds_document([("127.0.0.1", p) for p in ports], 1)))
        listed = ",".join(f"127.0.0.1:{p}@decode" for p in ports)
        c.gateway_up(listed, AFFINE, eds, "--refresh-metrics-interval", "1s")
        before = _served(ports)
        for _ in range(6):
            assert httpx.post(f"{c.url}/v1/completions", json=SHARED, timeout=30).is_success
        deltas = [a - b for a, b in zip(_served(ports), before, strict=True)]
        assert sorted(deltas) == [0, 6]  # the EPP's pick, not Envoy's round robin
        hot = deltas.index(6)
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            load = pool.submit(_load, c.url, stop)
            try:
                _kill_under_load(c, ports, hot)
            finally:
                stop.set()  # else leaving the block waits on the load for ever
            seen = load.result(60)
        assert seen and set(seen) == {200}, collections.Counter(seen)
        assert _stat(c.admin, "cluster.pool.upstream_rq_retry_success") >= 1  # saved by it
        failed = _stat(c.admin, "cluster.pool.upstream_cx_connect_fail")
        for _ in range(6):
            assert httpx.post(f"{c.url}/v1/completions", json=SHARED, timeout=30).is_success
        assert _stat(c.admin, "cluster.pool.upstream_cx_connect_fail") == failed  # not picked
    finally:
        c.stop()


GOOD = json.dumps({"model": "sim", "prompt": "hi", "max_tokens": 2}).encode()


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    body=st.one_of(
        st.binary(max_size=40).filter(lambda b: not b.strip().startswith(b"{")),
        st.integers(1, len(GOOD) - 1).map(lambda n: GOOD[:n]),  # cut short
        st.binary(min_size=1, max_size=4).map(lambda b: GOOD[:-2] + b"\xff" + b + b"}"),
        st.sampled_from([b"[" * 100_000 + b"]" * 100_000, b"[]", b"null", b'"x"', b"1e999"]),
    ),
)
def test_malformed_body_through_envoy_is_a_4xx_error(cluster: Cluster, path: str, body: bytes):
    """Issue 13's property on the EPP behind Envoy: a body no one can parse is a 4xx in the
    engines' error shape, never a 5xx or a dropped connection."""
    resp = httpx.post(
        cluster.url + path, content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    error = resp.json()["error"]  # the EPP's answer or the engine's, one shape either way
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == resp.status_code and error["message"], error


def test_still_serving_after_the_envoy_fuzz(cluster: Cluster) -> None:
    resp = httpx.post(f"{cluster.url}/v1/completions", content=GOOD, timeout=30)
    assert resp.status_code == 200, resp.text


def test_oversized_headers_and_bodies_are_refused_in_the_engines_shape(cluster: Cluster) -> None:
    """Headers past 64 KiB are Envoy's 431; a body past the EPP's 8 MiB its 413, before it is
    parsed; neither reaches an engine, and the gateway goes on serving."""
    with httpx.Client(timeout=60) as http:
        big = {"x-padding": "a" * (70 * 1024)}
        resp = http.post(f"{cluster.url}/v1/completions", json={"model": "sim"}, headers=big)
        assert _vllm_error(resp, 431)
        body = b'{"model": "sim", "prompt": "' + b"p" * (9 * 2**20) + b'"}'
        resp = http.post(
            f"{cluster.url}/v1/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert _vllm_error(resp, 413)["message"] == f"request body over {8 * 2**20} bytes"
        ok = http.post(
            f"{cluster.url}/v1/completions", json={"model": "sim", "prompt": "hi", "max_tokens": 2}
        )
        assert ok.status_code == 200


def _raw_post(port: int, rid: bytes, body: dict[str, object]) -> tuple[int, bytes]:
    """A completion sent on a raw socket, so the x-request-id can hold bytes no HTTP client
    would send: the status and the body."""
    data = json.dumps(body).encode()
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nX-Request-Id: " + rid + b"\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[-1]


def _engine_id(completion_id: str) -> str:
    """The x-request-id the engine served under: the sim's id is cmpl-<that>-<counter>."""
    return completion_id.removeprefix("cmpl-").rsplit("-", 1)[0]


def _epp_events(cluster: Cluster, name: str) -> list[dict[str, object]]:
    text = next(p for p in cluster.procs if p.name == "epp").log_path.read_text()
    return [json.loads(x) for x in text.splitlines() if f'"event":"{name}"' in x]


@pytest.mark.parametrize(
    ("bad", "kept"),
    [
        # Envoy's HTTP/1 parser ends a header at a bare LF: what follows is a header of its
        # own, and the id is what came before it.
        (b"line\nX-Injected: 1", "line"),
        (b"cr\rinside", "crinside"),  # and drops a bare CR
        (b"bell\x07", None),
        (b"x" * 129, None),
        (b"quote\"and'space s", None),
    ],
    ids=["newline", "cr", "control", "long", "unsafe"],
)
def test_an_unfit_request_id_is_replaced_before_any_log_or_engine(
    cluster: Cluster, bad: bytes, kept: str | None
) -> None:
    """Envoy keeps the client's x-request-id; what it lets through unfit, the EPP replaces
    with a fresh one the engine serves under, logging both. What Envoy's parser refuses is
    its 400 in the engines' shape. Either way the gateway goes on serving."""
    body = {"model": "sim", "prompt": "raw socket " * 30, "max_tokens": 1}
    status, answer = _raw_post(cluster.gateway, bad, body)
    assert status in (200, 400), answer
    if status == 400:
        assert json.loads(answer)["error"]["code"] == 400
    else:
        served = _engine_id(json.loads(answer)["id"])
        sidecar_logs = "".join(
            p.log_path.read_text() for p in cluster.procs if p.name.startswith("sidecar")
        )
        assert f'"request_id":"{served}"' in sidecar_logs
        if kept is not None:
            assert served == kept
        else:
            assert str(uuid.UUID(served)) == served
            replaced = _epp_events(cluster, "request_id_replaced")[-1]
            assert replaced["request_id"] == served
            shown = str(replaced["client_id"])
            assert shown.isascii() and shown.isprintable() and len(shown) < 100
    ok = httpx.post(f"{cluster.url}/v1/completions", json=body, timeout=30)
    assert ok.status_code == 200


def test_two_requests_in_flight_with_one_id_are_served_under_two(cluster: Cluster) -> None:
    """The second is decided while the first still streams: it gets a suffixed id, logged
    with the client's, and the engines serve the two under distinct ids."""
    rid = f"same-{uuid.uuid4().hex[:8]}"
    streamed = {"model": "sim", "prompt": "first " * 30, "max_tokens": 30, "stream": True}
    second = {"model": "sim", "prompt": "second " * 30, "max_tokens": 1}
    http = httpx.Client(timeout=60, headers={"x-request-id": rid})
    with http, http.stream("POST", f"{cluster.url}/v1/completions", json=streamed) as first:
        lines = first.iter_lines()
        chunk = next(line for line in lines if line.startswith("data: {"))
        other = http.post(f"{cluster.url}/v1/completions", json=second)
        rest = list(lines)
    assert other.status_code == 200 and [x for x in rest if x][-1] == "data: [DONE]"
    ids = {_engine_id(json.loads(chunk[6:])["id"]), _engine_id(other.json()["id"])}
    assert ids == {rid, f"{rid}-2"}
    dup = _epp_events(cluster, "request_id_duplicate")[-1]
    assert (dup["request_id"], dup["client_id"]) == (f"{rid}-2", rid)
    # The first one's end frees its id: the next request under it keeps it as it is.
    _until(lambda: _reuse(cluster, rid), "the id to be free again")


def _reuse(cluster: Cluster, rid: str) -> bool:
    body = {"model": "sim", "prompt": "again " * 30, "max_tokens": 1}
    resp = httpx.post(
        f"{cluster.url}/v1/completions", json=body, headers={"x-request-id": rid}, timeout=30
    )
    return _engine_id(resp.json()["id"]) == rid
