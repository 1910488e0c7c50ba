"""The engine takes the argument lists manifests give vLLM, and ignores what it does not model."""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest

from pdserve.engines.sim.cli import parse_args
from pdserve.process import free_port, wait_tcp
from testkit import PDSERVE, metric


def test_unknown_vllm_flags_do_not_swallow_values_or_the_model() -> None:
    args, ignored = parse_args(
        [
            "/mnt/models",
            "--served-model-name",
            "m",
            "--dtype",
            "float32",
            "--disable-log-requests",
            "--gpu-memory-utilization=0.1",
            "--seed",
            "-1",
            "--max-model-len",
            "4K",
            "--no-enable-prefix-caching",
            "-tp",
            "2",
            "--enforce-eager",
            "--port",
            "9",
        ]
    )
    assert args.model_tag == "/mnt/models" and args.served_model_name == ["m"]
    assert args.port == 9 and args.max_model_len == 4096 and args.tensor_parallel_size == 2
    assert args.enable_prefix_caching is False
    assert ignored == [
        "--dtype",
        "float32",
        "--disable-log-requests",
        "--gpu-memory-utilization=0.1",
        "--seed",
        "-1",
        "--enforce-eager",
    ]


def test_preset_args_are_accepted_and_logged(sim_engine) -> None:
    engine = sim_engine(
        "--disable-log-requests",
        "--dtype",
        "float32",
        "--gpu-memory-utilization",
        "0.1",
        "--max-model-len",
        "1k",
        "--num-gpu-blocks-override",
        "40",
        "--served-model-name",
        "sim",
        "alias",
    )
    models = httpx.get(f"{engine.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["sim", "alias"]
    # 40 blocks of 16 tokens hold 640 tokens: the context limit drops to what fits, as vLLM.
    assert models["data"][0]["max_model_len"] == 640
    info = httpx.get(f"{engine.url}/metrics").text
    assert 'num_gpu_blocks="40"' in info
    body = {"model": "alias", "prompt": "x", "max_tokens": 1}
    assert httpx.post(f"{engine.url}/v1/completions", json=body).json()["model"] == "sim"
    logged = [json.loads(ln) for ln in engine.proc.log_path.read_text().splitlines()]
    ignored = next(e for e in logged if e["event"] == "ignored_vllm_args")
    assert ignored["args"] == [
        "--disable-log-requests",
        "--dtype",
        "float32",
        "--gpu-memory-utilization",
        "0.1",
    ]


def test_prefix_caching_can_be_disabled(sim_engine) -> None:
    engine = sim_engine("--zero-cost", "--no-enable-prefix-caching")
    body = {"prompt": "same prompt " * 40, "max_tokens": 1}
    for _ in range(2):
        resp = httpx.post(f"{engine.url}/v1/completions", json=body).json()
        assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert metric(engine.url, "vllm:prefix_cache_hits_total") == 0


def test_serves_https_with_vllm_ssl_flags(spawn, tmp_path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = spawn(
        "tls",
        [
            *(*PDSERVE, "sim-engine", "--port", str(port), "--served-model-name", "sim"),
            *("--ssl-certfile", str(cert), "--ssl-keyfile", str(key)),
        ],
    )
    wait_tcp("127.0.0.1", port, timeout=60, check=proc.check_alive)  # listens once ready
    with httpx.Client(verify=False, timeout=10) as http:
        assert http.get(f"https://127.0.0.1:{port}/health").status_code == 200
        resp = http.post(
            f"https://127.0.0.1:{port}/v1/completions", json={"prompt": "tls", "max_tokens": 2}
        )
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--model", "/nonexistent/dir"], {}, "--model /nonexistent/dir: not a folder"),
        (["--kv-transfer-config", "{nope"], {}, "--kv-transfer-config: invalid JSON"),
        (["--profile", "/nonexistent.yaml"], {}, "--profile /nonexistent.yaml"),
        ([], {"VLLM_NIXL_SIDE_CHANNEL_PORT": "x"}, "VLLM_NIXL_SIDE_CHANNEL_PORT"),
        (
            ["--kv-transfer-config", '{"kv_load_failure_policy": "retry"}'],
            {},
            "kv_load_failure_policy 'retry'",
        ),
        (
            ["--kv-transfer-config", '{"kv_connector_extra_config": {"transport": "rdma"}}'],
            {},
            "transport 'rdma'",
        ),
        (
            ["--kv-transfer-config", '{"kv_connector": "NixlConnector"}'],
            {"VLLM_NIXL_ABORT_REQUEST_TIMEOUT": "soon"},
            "VLLM_NIXL_ABORT_REQUEST_TIMEOUT: expected seconds",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, env, needle) -> None:
    done = subprocess.run(
        [*PDSERVE, "sim-engine", "--port", "0", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert done.returncode == 2 and needle in done.stderr
    assert "Traceback" not in done.stderr


def test_busy_side_channel_port_and_bad_events_endpoint_are_one_line_errors() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        kv = '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}'
        events = '{"enable_kv_cache_events": true, "endpoint": "tcp://no such host:1"}'
        for argv, env, needle in (
            (["--kv-transfer-config", kv], {"VLLM_NIXL_SIDE_CHANNEL_PORT": taken}, "side channel"),
            (["--kv-events-config", events], {}, "--kv-events-config: endpoint"),
        ):
            done = subprocess.run(
                [*PDSERVE, "sim-engine", "--port", "0", *argv],
                capture_output=True,
                text=True,
                env={**os.environ, **env},
                timeout=60,
            )
            assert done.returncode == 2 and needle in done.stderr, done.stderr
            assert "Traceback" not in done.stderr


def test_print_profile_round_trips_through_profile(tmp_path) -> None:
    done = subprocess.run(
        [*PDSERVE, "sim-engine", "--print-profile", "--max-num-seqs", "8"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    saved = tmp_path / "p.yaml"
    saved.write_text(done.stdout)
    again = subprocess.run(
        [*PDSERVE, "sim-engine", "--print-profile", "--profile", str(saved)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert again.stdout == done.stdout and "max_num_seqs: 8\n" in done.stdout
