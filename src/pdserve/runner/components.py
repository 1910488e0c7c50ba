"""Command lines of the processes a local service is made of.

One function per component, each returning argv (and extra env) from ports and
the plan; nothing is started here. The engine kind (`vllm` or `sim`) only
changes the engine's command: both speak the same HTTP API, metrics and
NixlConnector protocol, so everything around them is identical.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from pdserve.block_hashes import DEFAULT_SEED
from pdserve.engines import vllm
from pdserve.engines.vllm import EngineCommand
from pdserve.errors import UserError
from pdserve.render import names
from pdserve.runner.plan import Plan, Pool
from pdserve.tls import CERT_FILE, KEY_FILE

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
    feed: tuple[KVFeed, str] | None = None,
    tls: Path | None = None,
) -> EngineCommand:
    """`log_config`: vLLM's logging config file (vllm.logging_config()); the sim logs JSON.
    `feed`: the KV-event feed and this engine's endpoint name, when the EPP wants events;
    sim engines only, as kv_feed refuses a precise config with vLLM engines.
    `tls`: the run's certificate folder (tls.crt, tls.key), to serve HTTPS with."""
    cmd = _engine(kind, plan, pool, model_dir, slot, log_config, feed)
    if tls is not None:  # vLLM's flags, which the sim takes too
        cmd.argv += ["--ssl-certfile", str(tls / CERT_FILE), "--ssl-keyfile", str(tls / KEY_FILE)]
    return cmd


def _engine(
    kind: str,
    plan: Plan,
    pool: Pool,
    model_dir: Path | None,
    slot: EngineSlot,
    log_config: Path | None,
    feed: tuple[KVFeed, str] | None,
) -> EngineCommand:
    if kind == "vllm":
        assert model_dir is not None and feed is None
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
    events = feed[0].engine_args(feed[1], plan.served_name, pool.args) if feed else []
    argv = [*PDSERVE, "sim-engine", "--host", "127.0.0.1", "--port", str(slot.port)]
    argv += ["--served-model-name", plan.served_name]
    if model_dir is not None:
        argv += ["--model", str(model_dir)]
    env: dict[str, str] = feed[0].engine_env() if feed else {}
    if plan.pd:  # NIXL is loaded for a KV connector only
        argv += ["--kv-transfer-config", vllm.kv_transfer_config()]
        env.update(vllm.UCX_LOOPBACK)
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "127.0.0.1"
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(slot.side_channel_port)
    return EngineCommand(argv + vllm.manifest_args(pool.args) + events, env)


def sidecar(
    plan: Plan, port: int, engine_port: int, endpoints_file: Path, tls: Path | None = None
) -> EngineCommand:
    """The decode engine's routing sidecar on loopback. It prefills only on the prefill
    endpoints of `endpoints_file`: their ports are chosen as engines start and change on
    scale, which a list given at start could not follow. With `tls` (the run's certificate
    folder) it serves HTTPS with it and calls both engines over HTTPS, verified."""
    argv = [*PDSERVE, "sidecar", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--vllm-port", str(engine_port), "--connector", "nixlv2"]
    argv += ["--enable-ssrf-protection", "--allowed-prefill-endpoints-file", str(endpoints_file)]
    env = {"INFERENCE_POOL_NAMESPACE": plan.namespace, "INFERENCE_POOL_NAME": plan.name}
    if tls is None:
        return EngineCommand([*argv, "--secure-proxy=false"], env)
    argv += ["--secure-proxy=true", "--cert-path", str(tls)]
    argv += ["--decoder-use-tls", "--prefiller-use-tls"]
    return EngineCommand(argv, env | trust_env(tls))


def trust_env(tls: Path) -> dict[str, str]:
    """The run's certificate as a child's only trusted CA. Through SSL_CERT_FILE, which
    OpenSSL (Python's default contexts, aiohttp's) and Go read alike, so llm-d's own sidecar
    and EPP, which have no CA flag, would trust it the same way. Only children that call
    nothing but the run's engines get it: it replaces the system's CAs."""
    return {"SSL_CERT_FILE": str(tls / CERT_FILE)}


def epp(
    plan: Plan,
    config_file: Path,
    endpoints_file: Path,
    ports: tuple[int, int, int, int],
    tls: Path | None = None,
) -> EngineCommand:
    """ports: gRPC ext_proc, gRPC health, metrics, KV events (all bound on loopback).
    `tls`: the engines serve HTTPS with the run's certificate; the EPP scrapes (and
    tokenizes) over HTTPS, verified against it."""
    grpc, health, metrics, kv_events = ports
    argv = [*PDSERVE, "epp", "--host", "127.0.0.1", "--config-file", str(config_file)]
    argv += ["--pool-name", names.inference_pool(plan.name), "--pool-namespace", plan.namespace]
    argv += ["--kv-events-endpoint", f"tcp://127.0.0.1:{kv_events}"]
    argv += ["--endpoints-file", str(endpoints_file)]
    argv += ["--grpc-port", str(grpc), "--grpc-health-port", str(health)]
    argv += ["--metrics-port", str(metrics)]
    if tls is None:
        return EngineCommand(argv)
    argv += ["--model-server-metrics-scheme", "https"]
    argv += ["--model-server-metrics-https-insecure-skip-verify=false"]
    return EngineCommand(argv, trust_env(tls))


def envoy(config_file: Path, base_id: int) -> EngineCommand:
    from pdserve.epp import envoy as envoy_lib

    argv = [str(envoy_lib.binary()), "-c", str(config_file), "--base-id", str(base_id)]
    argv += ["--log-level", "warn", "--disable-hot-restart"]
    return EngineCommand(argv)


@dataclass(frozen=True)
class KVFeed:
    """KV events from every engine to the EPP's precise producer: the loopback port the EPP
    binds, and how the engines must hash and block their cache for the EPP's keys to be
    theirs (the producer's hashAlgo, hashSeed and block size)."""

    port: int
    algorithm: str
    seed: str
    block_size: int

    def engine_args(self, endpoint: str, model: str, pool_args: tuple[str, ...]) -> list[str]:
        """`endpoint` names the engine as the EPP's endpoint list does (decode-0, ...)."""
        config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://127.0.0.1:{self.port}",
            "topic": f"kv@{endpoint}@{model}",
        }
        out = ["--kv-events-config", json.dumps(config, separators=(",", ":"))]
        out += ["--prefix-caching-hash-algo", self.algorithm]
        if not any(a.split("=", 1)[0] == "--block-size" for a in pool_args):
            out += ["--block-size", str(self.block_size)]
        return out

    def engine_env(self) -> dict[str, str]:
        return {"PYTHONHASHSEED": self.seed} if self.seed != DEFAULT_SEED else {}


def kv_feed(scheduler_config: str, port: int, kind: str) -> KVFeed | None:
    """The feed the EPP config asks for: None without a precise producer. `up` calls this
    before it starts anything, so a feed the engines cannot serve is one line at once."""
    from pdserve.epp import config as epp_config
    from pdserve.epp.plugins.prefix import PrecisePrefixProducer

    loaded = epp_config.load(scheduler_config, "scheduler config", allow_experimental=True)
    producer = next(
        (p for p in loaded.plugins.values() if isinstance(p, PrecisePrefixProducer)), None
    )
    if producer is None:
        return None
    if kind == "vllm":
        # vLLM told to connect its KV-event publisher to the EPP's bound tcp:// SUB (llm-d's
        # way) established the connection here but delivered no batch; it delivers when it
        # binds (ipc://), which needs the EPP to follow one endpoint per engine.
        raise UserError(
            "precise prefix routing (precise-prefix-cache-producer) runs with --engine sim "
            "under pdserve up; with vLLM engines use an approximate prefix config here"
        )
    return KVFeed(port, producer.scheme.algorithm, producer.scheme.seed, producer.block_tokens)


def localize_epp_config(scheduler_config: str, port: int, model_dir: Path | None) -> str:
    """The EPP config as this machine runs it: every KV-event subscription on the runner's
    loopback port (a config written for a cluster binds tcp://*:5557, which must not happen
    here), and the tokenizers of the token and precise producers from the model folder the
    engines serve, so the EPP counts the engines' tokens (no hub to fetch a name from)."""
    doc = yaml.safe_load(scheduler_config)
    for plugin in doc.get("plugins") or []:
        if not isinstance(plugin, dict):
            continue
        params = plugin.setdefault("parameters", {}) or {}
        plugin["parameters"] = params
        events = params.get("kvEventsConfig")
        if isinstance(events, dict):
            events["zmqEndpoint"] = f"tcp://127.0.0.1:{port}"
        if model_dir is None:
            continue
        if plugin.get("type") in ("token-producer", "tokenizer"):
            params["modelName"] = str(model_dir)
        elif plugin.get("type") == "precise-prefix-cache-producer":
            indexer = params.setdefault("indexerConfig", {})
            indexer.setdefault("tokenizersPoolConfig", {})["modelName"] = str(model_dir)
    return str(yaml.safe_dump(doc, sort_keys=False))
