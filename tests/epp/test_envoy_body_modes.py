"""Envoy's two ext_proc body modes. BUFFERED: Envoy waits for the answer to the headers,
then sends the whole body. FULL_DUPLEX_STREAMED (the default): the body reaches the EPP in
chunks without that wait, and the EPP streams it back with its decision."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from pdserve.epp import envoy
from pdserve.process import free_port, wait_tcp
from testkit import PDSERVE, Spawn, metric


@pytest.mark.parametrize("mode", ["FULL_DUPLEX_STREAMED", "BUFFERED"])
def test_body_mode_routes_through_envoy(spawn: Spawn, tmp_path: Path, mode: str) -> None:
    engines = [free_port(), free_port()]
    for i, p in enumerate(engines):
        argv = [*PDSERVE, "sim-engine", "--port", str(p), "--served-model-name", "sim"]
        spawn(f"engine{i}", [*argv, "--zero-cost"]).wait_http(
            f"http://127.0.0.1:{p}/health", timeout=60
        )
    grpc, health, mport, admin, gw = (free_port() for _ in range(5))
    epp = spawn(
        "epp",
        [
            *PDSERVE,
            "epp",
            "--host",
            "127.0.0.1",
            "--endpoints",
            ",".join(f"127.0.0.1:{p}" for p in engines),
            "--grpc-port",
            str(grpc),
            "--grpc-health-port",
            str(health),
            "--metrics-port",
            str(mport),
        ],
    )
    wait_tcp("127.0.0.1", grpc, 60, epp.check_alive)
    epp_url = f"http://127.0.0.1:{mport}"
    epp.wait_http(f"{epp_url}/metrics", timeout=60)
    cfg = tmp_path / "envoy.json"
    boot = envoy.bootstrap(gw, grpc, admin, ["/ns/llm"], mode)
    cfg.write_text(json.dumps(boot))
    argv = [str(envoy.binary()), "-c", str(cfg), "--base-id", str(gw), "--log-level", "warn"]
    spawn("envoy", argv).wait_http(f"http://127.0.0.1:{admin}/ready", timeout=60)

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw}/ns/llm/v1", api_key="x", timeout=60)
    shared = "a long shared document for prefix affinity. " * 40
    for i in range(4):
        stream = client.completions.create(
            model="sim", prompt=f"{shared} question {i}", max_tokens=5, stream=True
        )
        assert "".join(c.choices[0].text for c in stream if c.choices)
    chat = client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.choices[0].message.content

    # Every request was decided by the EPP, and the shared prefix kept one engine.
    assert metric(epp_url, "inference_model_request_total", model_name="sim") >= 5
    served = [
        metric(f"http://127.0.0.1:{p}", "vllm:request_success_total", model_name="sim")
        for p in engines
    ]
    assert sum(served) == 5 and max(served) >= 4, served

    models = httpx.get(f"http://127.0.0.1:{gw}/ns/llm/v1/models", timeout=30)
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "sim"
    bad = httpx.post(
        f"http://127.0.0.1:{gw}/ns/llm/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert bad.status_code == 400, bad.text
    error = bad.json()["error"]
    assert error["code"] == 400 and error["message"].startswith("invalid JSON")
