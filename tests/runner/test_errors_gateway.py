"""Bad requests through the real gateway of `pdserve up --engine sim`: whichever hop refuses
one (the EPP, the sidecar, an engine, the runner's control port), the body is vLLM 0.32's
error shape with the status that hop meant."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from upkit import SYSTEM, Service

from pdserve import wire
from pdserve.runner.control import read_token
from testkit import metric

MODEL = "smollm2"


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The error a response carries, after checking it is exactly vLLM's shape."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == status and error["type"] == wire.error_type(status), error
    assert isinstance(error["message"], str) and error["message"], error
    return dict(error)


def short(**fields: Any) -> dict[str, Any]:
    """A chat the EPP serves decode-only (below the example's prefill threshold)."""
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


def long(**fields: Any) -> dict[str, Any]:
    """A chat the EPP disaggregates: long, and new to every prefix cache (its first block)."""
    first = f"[{uuid.uuid4().hex}] {SYSTEM}"
    messages = [{"role": "system", "content": first}, {"role": "user", "content": "Capital?"}]
    return {"model": MODEL, "messages": messages, **fields}


def log_events(service: Service, component: str, name: str) -> list[dict[str, Any]]:
    lines = service.cli("logs", component).stdout.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == name]


def test_every_hop_answers_bad_requests_in_the_engines_error_shape(
    up: Callable[..., Service],
) -> None:
    service = up("--engine", "sim")
    chat = f"{service.url}/v1/chat/completions"
    cards = httpx.get(f"{service.url}/v1/models", timeout=30).json()["data"]
    context = cards[0]["max_model_len"]
    sidecar = f"http://127.0.0.1:{service.component('sidecar-0')['port']}"
    prefill = f"http://127.0.0.1:{service.component('prefill-0')['port']}"

    # The EPP: a body it cannot read, logged under the request id.
    rid = f"bad-json-{uuid.uuid4().hex[:8]}"
    bad = httpx.post(
        chat,
        content=b'{"model": "smollm2", "messages": [',
        headers={"content-type": "application/json", "x-request-id": rid},
        timeout=30,
    )
    assert error_of(bad, 400)["message"].startswith("invalid JSON body")
    logged = log_events(service, "epp", "bad_request")
    assert [e["request_id"] for e in logged] == [rid] and logged[0]["level"] == "warning"

    # An engine: an unknown model (decode-only, and P/D where the prefiller refuses it).
    for body in (short(model="nope"), long(model="nope")):
        resp = httpx.post(chat, json=body, timeout=30)
        assert "does not exist" in error_of(resp, 404)["message"]

    # An unknown path, and a known one with the wrong method, reach the engine.
    assert error_of(httpx.get(f"{service.url}/v1/nope", timeout=30), 404)
    assert error_of(httpx.post(f"{service.url}/v1/models", json={}, timeout=30), 405)

    # A sampling field vLLM refuses: the engine (decode-only) or the sidecar (P/D).
    for body in (short(temperature=-1), long(top_p=1.5), long(stream="maybe")):
        resp = httpx.post(chat, json=body, timeout=30)
        param = next(k for k in ("temperature", "top_p", "stream") if k in body)
        assert error_of(resp, 400)["param"] == param

    # max_tokens beyond the context: refused by the engine, or by the sidecar before the
    # prefill leg, so the prefill engine never sees the request.
    too_many = context + 1
    resp = httpx.post(chat, json=short(max_tokens=too_many), timeout=30)
    assert "maximum context length" in error_of(resp, 400)["message"]
    prefilled = metric(prefill, "vllm:request_success_total")
    rejected = metric(sidecar, "pdserve_sidecar_requests_total", outcome="rejected")
    rid = f"too-long-{uuid.uuid4().hex[:8]}"
    resp = httpx.post(
        chat, json=long(max_tokens=too_many), headers={"x-request-id": rid}, timeout=30
    )
    error = error_of(resp, 400)
    assert error["param"] == "max_tokens" and f"max_model_len={context}" in error["message"]
    assert metric(prefill, "vllm:request_success_total") == prefilled
    assert metric(sidecar, "pdserve_sidecar_requests_total", outcome="rejected") == rejected + 1
    refused = [e for e in log_events(service, "sidecar-0", "request") if e["request_id"] == rid]
    assert len(refused) == 1 and refused[0]["outcome"] == "rejected"
    assert refused[0]["param"] == "max_tokens" and refused[0]["status"] == 400

    # The gateway still serves, P/D included.
    ok = httpx.post(chat, json=long(max_tokens=4), timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
    assert metric(prefill, "vllm:request_success_total") == prefilled + 1

    # The runner's control port (what `pdserve scale` calls).
    control = f"http://127.0.0.1:{service.state()['control_port']}"
    auth = {"authorization": f"Bearer {read_token(service.state_dir)}"}
    nope = httpx.post(f"{control}/nope", json={}, headers=auth)
    assert "unknown path" in error_of(nope, 404)["message"]
    bad = httpx.post(f"{control}/scale", json={"pool": "decode"}, headers=auth, timeout=30)
    assert error_of(bad, 400)["message"] == "'replicas'"
    zero = {"pool": "decode", "replicas": 0}
    none = httpx.post(f"{control}/scale", json=zero, headers=auth, timeout=30)
    assert error_of(none, 400)["message"] == "decode replicas must be >= 1"
