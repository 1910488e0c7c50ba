"""`pdserve up --engine sim --tls`: HTTPS on both legs (gateway to sidecar and engines,
sidecar to both engines) with one certificate the run makes; clients stay on plain HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from upkit import EXAMPLE, Service, all_dead, chat, pdserve

from pdserve.process import free_port, wait_until
from testkit import metric_in

MODEL = "smollm2"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the module (1 prefill + 1 decode, the example), always downed."""
    svc = Service(tmp_path_factory.mktemp("tls") / "state", free_port())
    tmp = Path(tempfile.mkdtemp(prefix="up-", dir="/tmp"))
    args = ["up", str(EXAMPLE), "--engine", "sim", "--tls", "--detach"]
    args += ["--port", str(svc.port), "--state-dir", str(svc.state_dir)]
    done = pdserve(*args, timeout=300, env={**os.environ, "TMPDIR": str(tmp)})
    pids = svc.pids() if (svc.state_dir / "state.json").exists() else []
    try:
        assert done.returncode == 0, f"pdserve up failed:\n{done.stdout}\n{done.stderr}"
        yield svc
    finally:
        svc.cli("down", timeout=300)
        assert all_dead(pids + svc.pids()), "pdserve down left processes running"
        left = list(tmp.iterdir())
        shutil.rmtree(tmp)
        assert left == [], "pdserve down left temporary files"


def ca(service: Service) -> Path:
    return service.state_dir / "tls" / "tls.crt"


def trusting(service: Service) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca(service)))


def test_pd_and_decode_only_requests_through_the_plain_gateway(service: Service) -> None:
    api = openai.OpenAI(base_url=f"{service.url}/v1", api_key="none", max_retries=0, timeout=60)
    pd_id, local_id = (f"tls-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("pd", "local"))
    long = api.chat.completions.create(
        model=MODEL,
        messages=chat("What is the capital of France?"),
        max_tokens=8,
        extra_headers={"x-request-id": pd_id},
    )
    assert long.usage is not None and long.usage.completion_tokens == 8
    short = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        extra_headers={"x-request-id": local_id},
    )
    assert short.choices[0].message.content

    def section(rid: str) -> str:
        trace = service.cli("logs").stdout
        return trace.split(f"request {rid}", 1)[-1].split("\nrequest ", 1)[0]

    # The sidecar logs once its answer is sent: its line may land just after the client's.
    wait_until(lambda: "sidecar-0" in section(local_id), 30, "the sidecar's trace lines")
    handoff = section(pd_id)
    assert "outcome=pd" in handoff and "kv_handle=" in handoff, handoff
    assert "prefill-0" in handoff and "kv_pull" in handoff, handoff
    assert "outcome=decode-only" in section(local_id)


def test_the_gateway_port_answers_https_too(service: Service) -> None:
    """Plain clients are unchanged; one that trusts the run's CA may use HTTPS there."""
    with httpx.Client(verify=trusting(service), timeout=60) as http:
        api = openai.OpenAI(
            base_url=f"https://localhost:{service.port}/v1",
            api_key="none",
            max_retries=0,
            http_client=http,
        )
        reply = api.chat.completions.create(
            model=MODEL, messages=chat("What is the capital of Spain?"), max_tokens=4
        )
    assert reply.usage is not None and reply.usage.completion_tokens == 4


@pytest.mark.parametrize("name", ["decode-0", "prefill-0", "sidecar-0"])
def test_engines_and_the_sidecar_speak_only_verified_tls(service: Service, name: str) -> None:
    port = service.component(name)["port"]
    with pytest.raises(httpx.HTTPError):  # plain HTTP to a TLS listener: no HTTP answer
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{port}/health", timeout=5)  # the system's CAs only
    for host in ("127.0.0.1", "localhost"):
        ok = httpx.get(f"https://{host}:{port}/health", verify=trusting(service), timeout=5)
        assert ok.status_code == 200


def test_one_certificate_for_the_run_with_a_private_key(service: Service) -> None:
    folder = ca(service).parent
    assert sorted(p.name for p in folder.iterdir()) == ["tls.crt", "tls.key"]
    assert (folder / "tls.key").stat().st_mode & 0o777 == 0o600
    assert service.state()["summary"]["tls_ca"] == str(ca(service))
    status = service.cli("status")
    assert status.returncode == 0 and f"CA {ca(service)}" in status.stdout


def test_the_epp_and_the_gateway_health_checks_reach_them_verified(service: Service) -> None:
    """The EPP's HTTPS scrapes count both endpoints ready; Envoy's health checks of the
    fail-open pool cluster (over the cluster's TLS socket) find the decode endpoint healthy."""
    boot = json.loads((service.state_dir / "envoy.json").read_text())
    admin = boot["admin"]["address"]["socket_address"]["port_value"]
    sidecar = service.component("sidecar-0")["port"]
    healthy = f"pool::127.0.0.1:{sidecar}::health_flags::healthy"

    def pool_healthy() -> bool:
        return healthy in httpx.get(f"http://127.0.0.1:{admin}/clusters", timeout=5).text

    wait_until(pool_healthy, 30, "Envoy's pool health check to pass")
    metrics_port = _epp_metrics_port(service)
    page = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert metric_in(page, "inference_pool_ready_pods") == 2
    assert "endpoint_not_ready" not in (service.state_dir / "logs" / "epp.log").read_text()


def _epp_metrics_port(service: Service) -> int:
    """The EPP logs its ports once ready (its state row holds the gRPC one)."""
    for line in (service.state_dir / "logs" / "epp.log").read_text().splitlines():
        if '"event":"ready"' in line:
            return int(json.loads(line)["metrics_port"])
    raise AssertionError("the EPP logged no ready line")


def test_a_replica_scaled_in_speaks_tls_and_drains_over_it(service: Service) -> None:
    out = service.cli("scale", "decode", "2")
    assert out.returncode == 0, out.stderr
    for name in ("decode-1", "sidecar-1"):
        port = service.component(name)["port"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        ok = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusting(service), timeout=5)
        assert ok.status_code == 200
    out = service.cli("scale", "decode", "1")
    assert out.returncode == 0 and "decode-1 stopped" in out.stdout, out.stdout + out.stderr
    assert service.state()["summary"]["pools"]["decode"] == 1


def test_a_killed_engine_is_back_through_the_verified_health_probe(service: Service) -> None:
    """Last here: it restarts prefill-0. The runner's probe must pass over HTTPS for the
    engine to be ready again, and the restarted engine serves the same certificate."""
    before = service.component("prefill-0")
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> bool:
        row = service.component("prefill-0")
        return row.get("restarts") == 1 and row["status"] == "ready"

    wait_until(back, 60, "prefill-0 to restart and pass its health check")
    port = service.component("prefill-0")["port"]
    ok = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusting(service), timeout=5)
    assert port == before["port"] and ok.status_code == 200
