"""Command lines of the processes a local service is made of.

One function per component, each returning argv (and extra env) from ports and
the plan; nothing is started here. The engine kind (`vllm` or `sim`) only
changes the engine's command: both speak the same HTTP API, metrics and
NixlConnector protocol, so everything around them is identical.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pdserve.engines import vllm
from pdserve.engines.vllm import EngineCommand
from pdserve.render import names
from pdserve.runner.plan import Plan, Pool

PDSERVE = [sys.executable, "-m", "pdserve"]
ENGINE_KINDS = ("vllm", "sim")


@dataclass(frozen=True)
class EngineSlot:
    """Where one engine runs: its port, NIXL side channel, and cores (None: unpinned)."""

    port: int
    side_channel_port: int
    cores: str | None


def engine(
    kind: str,
    plan: Plan,
    pool: Pool,
    model_dir: Path | None,
    slot: EngineSlot,
    log_config: Path | None = None,
) -> EngineCommand:
    """`log_config`: vLLM's logging config file (vllm.logging_config()); the sim logs JSON."""
    if kind == "vllm":
        assert model_dir is not None
        return vllm.command(
            model_dir,
            plan.served_name,
            slot.port,
            args=pool.args,
            pd=plan.pd,
            side_channel_port=slot.side_channel_port,
            cores=slot.cores,
            log_config=log_config,
        )
    argv = [*PDSERVE, "sim-engine", "--host", "127.0.0.1", "--port", str(slot.port)]
    argv += ["--served-model-name", plan.served_name]
    if model_dir is not None:
        argv += ["--model", str(model_dir)]
    env: dict[str, str] = {}
    if plan.pd:  # NIXL is loaded for a KV connector only
        argv += ["--kv-transfer-config", vllm.kv_transfer_config()]
        env.update(vllm.UCX_LOOPBACK)
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "127.0.0.1"
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(slot.side_channel_port)
    return EngineCommand(argv + vllm.manifest_args(pool.args), env)


def sidecar(plan: Plan, port: int, engine_port: int, endpoints_file: Path) -> EngineCommand:
    """The decode engine's routing sidecar, plain HTTP on loopback. It prefills only on the
    prefill endpoints of `endpoints_file`: their ports are chosen as engines start and
    change on scale, which a list given at start could not follow."""
    argv = [*PDSERVE, "sidecar", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--vllm-port", str(engine_port), "--connector", "nixlv2", "--secure-proxy=false"]
    argv += ["--enable-ssrf-protection", "--allowed-prefill-endpoints-file", str(endpoints_file)]
    env = {"INFERENCE_POOL_NAMESPACE": plan.namespace, "INFERENCE_POOL_NAME": plan.name}
    return EngineCommand(argv, env)


def epp(
    plan: Plan, config_file: Path, endpoints_file: Path, ports: tuple[int, int, int, int]
) -> EngineCommand:
    """ports: gRPC ext_proc, gRPC health, metrics, KV events (all bound on loopback)."""
    grpc, health, metrics, kv_events = ports
    argv = [*PDSERVE, "epp", "--host", "127.0.0.1", "--config-file", str(config_file)]
    argv += ["--pool-name", names.inference_pool(plan.name), "--pool-namespace", plan.namespace]
    argv += ["--kv-events-endpoint", f"tcp://127.0.0.1:{kv_events}"]
    argv += ["--endpoints-file", str(endpoints_file)]
    argv += ["--grpc-port", str(grpc), "--grpc-health-port", str(health)]
    argv += ["--metrics-port", str(metrics)]
    return EngineCommand(argv)


def envoy(config_file: Path, base_id: int) -> EngineCommand:
    from pdserve.epp import envoy as envoy_lib

    argv = [str(envoy_lib.binary()), "-c", str(config_file), "--base-id", str(base_id)]
    argv += ["--log-level", "warn", "--disable-hot-restart"]
    return EngineCommand(argv)
