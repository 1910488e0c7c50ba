import json
import os
import subprocess

from testkit import PDSERVE


def test_help_lists_commands() -> None:
    out = subprocess.run([*PDSERVE, "--help"], capture_output=True, text=True, check=True).stdout
    assert "render" in out and "sim-engine" in out


def test_unknown_command_exits_2() -> None:
    proc = subprocess.run([*PDSERVE, "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown command 'frobnicate'" in proc.stderr


def test_sidecar_pool_allow_list_outside_kubernetes_is_one_line_exit_2() -> None:
    argv = [*PDSERVE, "sidecar", "--port", "0", "--enable-ssrf-protection"]
    argv += ["--inference-pool-name", "p", "--inference-pool-namespace", "ns"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allowed-prefill-hosts" in lines[0], lines
    assert "service account" in lines[0]


def test_gateway_config_has_the_watching_filter_unless_turned_off() -> None:
    def filters(*flags: str) -> list[dict]:
        argv = [*PDSERVE, "gateway-config", "--port", "8080", *flags]
        boot = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
        hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        return hcm["typed_config"]["http_filters"]

    watching = [f for f in filters() if f["typed_config"].get("observability_mode")]
    assert len(watching) == 1
    assert watching[0]["typed_config"]["processing_mode"]["response_body_mode"] == "STREAMED"
    assert not [f for f in filters("--watch=false") if f["typed_config"].get("observability_mode")]
    assert len(filters("--watch=false")) == len(filters()) - 1


def test_gateway_config_timeouts_and_retry_are_flags_with_streaming_defaults() -> None:
    def hcm(*flags: str) -> dict:
        argv = [*PDSERVE, "gateway-config", "--port", "8080", "--route-prefix", "/ns/llm", *flags]
        boot = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
        return boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"
        ]

    default = hcm()
    routes = [r["route"] for r in default["route_config"]["virtual_hosts"][0]["routes"]]
    assert len(routes) == 2 and default["stream_idle_timeout"] == "300s"
    for route in routes:
        assert (route["timeout"], route["idle_timeout"]) == ("0s", "300s")
        assert route["retry_policy"] == {
            "retry_on": "connect-failure,reset-before-request",
            "num_retries": 1,
        }
    tuned = hcm("--route-timeout", "10m", "--stream-idle-timeout", "30s")
    route = tuned["route_config"]["virtual_hosts"][0]["routes"][-1]["route"]
    assert (route["timeout"], route["idle_timeout"], tuned["stream_idle_timeout"]) == (
        "600s",
        "30s",
        "30s",
    )
