"""`pdserve sidecar` flags as llm-d-router v0.10 reads them: the config document under the
flags, the deprecated aliases, and one line with exit 2 for every bad value."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pdserve import cli
from pdserve.sidecar.cli import settings
from testkit import PDSERVE


def test_model_server_port_and_its_deprecated_alias() -> None:
    assert settings([])[0].model_server_port == 8001
    assert settings(["--vllm-port", "9001"])[0].model_server_port == 9001
    both = ["--vllm-port", "9001", "--model-server-port", "9002"]
    assert settings(both)[0].model_server_port == 9002
    assert settings(both)[0].deprecated == ["--vllm-port: use --model-server-port"]
    assert settings(["--model-server-port", "9002"])[0].deprecated == []


def test_prefiller_sampling_defaults_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("ENABLE_PREFILLER_SAMPLING", "true")
    assert settings([])[0].enable_prefiller_sampling is True
    assert settings(["--enable-prefiller-sampling=false"])[0].enable_prefiller_sampling is False
    monkeypatch.setenv("ENABLE_PREFILLER_SAMPLING", "maybe")  # upstream ignores it
    assert settings([])[0].enable_prefiller_sampling is False


def test_the_configuration_fills_what_the_flags_leave() -> None:
    doc = (
        "{port: 8100, model-server-port: 8201, prefill-max-retries: 3, "
        "prefill-retry-backoff: 50ms, decode-chunk-size: 16, enable-prefiller-sampling: true, "
        "data-parallel-size: 2, kv-connector: nixlv2, enable-tls: [prefiller], "
        "inference-pool: ns/pool, tracing: true}"
    )
    args, ignored = settings(["--configuration", doc, "--port", "8300"])
    assert args.port == 8300  # the flag wins
    assert args.model_server_port == 8201
    assert args.prefill_max_retries == 3 and args.prefill_retry_backoff_s == pytest.approx(0.05)
    assert args.decode_chunk_size == 16 and args.enable_prefiller_sampling is True
    assert args.data_parallel_size == 2 and args.connector == "nixlv2"
    assert args.prefiller_use_tls is True and args.decoder_use_tls is False
    assert (args.inference_pool_namespace, args.inference_pool_name) == ("ns", "pool")
    assert ignored == ["tracing"]  # upstream's key, nothing to do here


def test_each_legs_timeouts_default_to_the_flag_that_bounded_them_before() -> None:
    args = settings([])[0]
    assert (args.connect_timeout, args.first_byte_timeout, args.read_timeout) == (10, 300, 300)
    assert (args.prefill_connect_timeout, args.prefill_first_byte_timeout) == (10, 300)
    assert (args.prefill_read_timeout, args.max_in_flight) == (300, 512)
    args = settings(["--read-timeout", "5", "--prefill-timeout", "60", "--connect-timeout", "2"])[0]
    assert (args.first_byte_timeout, args.prefill_read_timeout) == (5, 5)
    assert (args.prefill_first_byte_timeout, args.prefill_connect_timeout) == (60, 2)
    args = settings(["--read-timeout", "5", "--first-byte-timeout", "900"])[0]
    assert (args.first_byte_timeout, args.read_timeout) == (900, 5)


def test_port_precedence_and_a_json_file(tmp_path: Path) -> None:
    file = tmp_path / "sidecar.json"
    file.write_text(json.dumps({"model-server-port": 8201, "vllm-port": 8202}))
    assert settings(["--configuration-file", str(file)])[0].model_server_port == 8201
    # The deprecated flag given explicitly still beats the document's model-server-port.
    flagged = ["--configuration-file", str(file), "--vllm-port", "8203"]
    assert settings(flagged)[0].model_server_port == 8203
    file.write_text("vllm-port: 8202\nprefill-max-retries: 0\nsecure-proxy: false\n")
    args, _ = settings(["--configuration-file", str(file), "--prefill-max-retries=2"])
    assert args.model_server_port == 8202 and args.prefill_max_retries == 2
    assert args.secure_proxy is False  # a false in the document counts (a pointer upstream)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--port", "abc"], "argument --port: invalid int value: 'abc'"),
        (["--model-server-port", "0"], "--model-server-port 0 is out of range [1, 65535]"),
        (["--port", "65535", "--data-parallel-size", "2"], "--port 65535 with"),
        (["--data-parallel-size", "0"], "--data-parallel-size must be a positive integer"),
        (["--kv-connector", "sglang"], "--kv-connector 'sglang': not supported by pdserve"),
        (["--kv-connector", "shared-storage"], "not supported by pdserve, which runs nixlv2"),
        (["--kv-connector", "bogus"], "--kv-connector 'bogus': expected one of nixlv2, "),
        (["--connector", "mooncake"], "--connector 'mooncake': expected one of"),
        (["--prefill-max-retries", "-1"], "--prefill-max-retries must be 0 or more"),
        (["--prefill-retry-backoff", "200"], "--prefill-retry-backoff: not a duration"),
        (
            ["--prefill-max-retries", "2", "--prefill-retry-backoff", "0"],
            "--prefill-retry-backoff must be positive",
        ),
        (["--decode-chunk-size", "-4"], "--decode-chunk-size must be 0 (off)"),
        (["--enable-prefiller-sampling=maybe"], "invalid boolean value 'maybe'"),
        (["--enable-tls", "prefiller,gpu"], "--enable-tls: stage 'gpu': expected one of"),
        (["--inference-pool", "a/b/c"], "--inference-pool 'a/b/c': expected namespace/name"),
        (["--read-timeout", "0"], "--read-timeout must be a positive number of seconds"),
        (["--prefill-read-timeout", "nan"], "--prefill-read-timeout must be a positive number"),
        (["--first-byte-timeout", "inf"], "--first-byte-timeout must be a positive number"),
        (["--max-in-flight", "-1"], "--max-in-flight must be 0 (no bound) or more, got -1"),
        (["--max-request-body-bytes", "0"], "--max-request-body-bytes must be a positive"),
        (["--configuration", "{port: 1", "--configuration-file", "x"], "mutually exclusive"),
        (["--configuration", "{port: [1"], "--configuration: not YAML or JSON"),
        (["--configuration", "[1, 2]"], "expected a mapping of flag names, got list"),
        (["--configuration", "{portt: 1}"], "--configuration: unknown key 'portt'"),
        (["--configuration", "{port: '80'}"], "--configuration: port: expected an integer"),
        (["--configuration", "{secure-proxy: 1}"], "secure-proxy: expected true or false"),
        (["--configuration", "{kv-connector: mooncake}"], "--kv-connector 'mooncake'"),
        (["--configuration-file", "/nonexistent.yaml"], "--configuration-file /nonexistent"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(argv: list[str], line: str, capsys) -> None:
    assert cli.main(["sidecar", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pdserve sidecar: ") and line in err, err


def test_an_unsupported_kv_connector_is_refused_before_anything_listens() -> None:
    proc = subprocess.run(
        [*PDSERVE, "sidecar", "--port", "0", "--kv-connector=offloading"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "pdserve sidecar: --kv-connector 'offloading': not supported by pdserve, "
        "which runs nixlv2\n"
    )


def test_ssrf_protection_names_every_way_to_give_its_allow_list() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_POOL")}
    proc = subprocess.run(
        [*PDSERVE, "sidecar", "--port", "0", "--enable-ssrf-protection"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--allowed-prefill-hosts" in proc.stderr and "--inference-pool " in proc.stderr
