"""The runner's pure parts: plan from a merged spec, engine command lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdserve.engines import vllm
from pdserve.runner import components
from pdserve.runner.components import EngineSlot
from pdserve.runner.plan import make_plan


def merged(prefill: bool = True) -> dict:
    main = {
        "name": "main",
        "args": [
            "--served-model-name",
            "smollm2",
            "--port",
            "8001",
            "--disable-log-requests",
            "--max-model-len=2048",
            "--enable-ssl-refresh",
            "--ssl-certfile",
            "/x",
        ],
    }
    spec: dict = {
        "model": {"uri": "builtin://smollm2-135m-instruct", "name": "smollm2"},
        "replicas": 2,
        "template": {"containers": [{"name": "sidecar"}, main]},
    }
    if prefill:
        spec["prefill"] = {"replicas": 1, "template": {"containers": [main]}}
    return {"metadata": {"name": "svc", "namespace": "team"}, "spec": spec}


def test_plan_pd_pools_and_route() -> None:
    plan = make_plan(merged(), "default", "kind: EndpointPickerConfig")
    assert plan.pd and plan.prefill is not None
    assert (plan.prefill.role, plan.prefill.replicas) == ("prefill", 1)
    assert (plan.decode.role, plan.decode.replicas) == ("decode", 2)
    assert plan.route_prefix == "/team/svc"
    assert plan.served_name == "smollm2"
    assert "--max-model-len=2048" in plan.decode.args


def test_plan_aggregated_is_role_both_and_defaults() -> None:
    spec = merged(prefill=False)
    del spec["spec"]["replicas"], spec["spec"]["model"]["name"], spec["metadata"]["namespace"]
    plan = make_plan(spec, "default", "")
    assert not plan.pd
    assert (plan.decode.role, plan.decode.replicas) == ("both", 1)
    assert plan.served_name == "svc" and plan.namespace == "default"


def test_manifest_args_drop_owned_and_removed_flags() -> None:
    kept = vllm.manifest_args(merged()["spec"]["template"]["containers"][1]["args"])
    assert kept == ["--max-model-len=2048"]


def test_vllm_command_pd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed").touch()
    monkeypatch.setenv("PDSERVE_ENGINES_VENV", str(venv))
    cmd = vllm.command(
        Path("/m"),
        "smollm2",
        9001,
        args=["--dtype", "bfloat16"],
        pd=True,
        side_channel_port=5600,
        cores="1",
    )
    assert cmd.argv[:3] == [
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
    ]
    assert cmd.argv.count("--dtype") == 1  # the manifest's choice wins over float32
    kv = json.loads(cmd.argv[cmd.argv.index("--kv-transfer-config") + 1])
    assert kv == {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cpu"}
    assert cmd.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600"
    assert cmd.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"
    assert cmd.env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert cmd.argv[cmd.argv.index("--host") + 1] == "127.0.0.1"


def test_sim_engine_command_aggregated_has_no_connector() -> None:
    plan = make_plan(merged(prefill=False), "default", "")
    cmd = components.engine("sim", plan, plan.decode, None, EngineSlot(9000, 9001, None))
    assert "sim-engine" in cmd.argv and "--kv-transfer-config" not in cmd.argv
    assert cmd.argv[cmd.argv.index("--port") + 1] == "9000"
    assert "--max-model-len=2048" in cmd.argv and not cmd.env


def test_tls_reaches_every_command_of_a_run(tmp_path: Path) -> None:
    """--tls: the engine serves the run's pair (the manifest's own TLS flags dropped), the
    sidecar serves it and calls both engines over verified HTTPS, the EPP scrapes verified;
    both trust the run's certificate alone."""
    plan = make_plan(merged(), "default", "")
    engine = components.engine(
        "sim", plan, plan.decode, None, EngineSlot(9000, 9001, None), tls=tmp_path
    )
    assert engine.argv.count("--ssl-certfile") == 1 and "/x" not in engine.argv
    assert engine.argv[engine.argv.index("--ssl-certfile") + 1] == str(tmp_path / "tls.crt")
    assert engine.argv[engine.argv.index("--ssl-keyfile") + 1] == str(tmp_path / "tls.key")
    trust = {"SSL_CERT_FILE": str(tmp_path / "tls.crt")}

    sidecar = components.sidecar(plan, 8000, 9000, tmp_path / "targets.json", tls=tmp_path)
    for flag in ("--secure-proxy=true", "--decoder-use-tls", "--prefiller-use-tls"):
        assert flag in sidecar.argv
    assert sidecar.argv[sidecar.argv.index("--cert-path") + 1] == str(tmp_path)
    assert not any("skip-verify" in a for a in sidecar.argv)
    assert trust.items() <= sidecar.env.items()

    epp = components.epp(plan, tmp_path / "c.yaml", tmp_path / "e.json", (1, 2, 3, 4), tmp_path)
    assert epp.argv[epp.argv.index("--model-server-metrics-scheme") + 1] == "https"
    assert "--model-server-metrics-https-insecure-skip-verify=false" in epp.argv
    assert epp.env == trust

    plain = components.sidecar(plan, 8000, 9000, tmp_path / "targets.json")
    assert "--secure-proxy=false" in plain.argv and "SSL_CERT_FILE" not in plain.env
    assert (
        "--model-server-metrics-scheme"
        not in components.epp(plan, tmp_path / "c.yaml", tmp_path / "e.json", (1, 2, 3, 4)).argv
    )
