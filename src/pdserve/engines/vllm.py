"""The command line and environment of one real vLLM engine.

The manifest's container args are vLLM flags (a pod runs `vllm serve /mnt/models
ARGS`); the runner keeps them, except the ones it owns on one machine (model
folder, name, host, port, TLS, KV connector) and flags this vLLM no longer
accepts. P/D engines get the NixlConnector with a CPU KV buffer, their own NIXL
side-channel port and their own cores: two engines sharing cores make decode
crawl (PROTOCOLS.md section 4).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdserve.engines.cache import compile_cache_env
from pdserve.engines.venv import engines_python
from pdserve.wire import NIXL_CONNECTOR

# Flags whose value the runner decides (the value that follows is dropped too).
OWNED_WITH_VALUE = {
    "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--kv-transfer-config",
    "--ssl-certfile",
    "--ssl-keyfile",
    "--ssl-ca-certs",
}
# Switches dropped: TLS refresh (plain HTTP on loopback), and flags removed from vLLM
# (request logging is off by default since --disable-log-requests went away).
DROPPED_SWITCHES = {"--enable-ssl-refresh", "--disable-log-requests"}

# KV cache of a CPU engine, GiB. vLLM CPU otherwise sizes it as a share of the NUMA
# node's RAM minus the worker's own RSS, which goes negative for small shares on a
# small node (seen here with 0.12 of 10.7 GiB); a fixed size is predictable.
CPU_KV_CACHE_GIB = "1"
# vLLM 0.32's CPU attention caches in blocks of a multiple of this many tokens ("No common
# block size for 16 (CPU_ATTN: [MultipleOf(32)])"); its default block size is one.
CPU_BLOCK_MULTIPLE = 32

# NIXL's UCX opens a TCP listener on every network device (the machine's external address
# too) unless told which; loopback is all that engines on one machine need.
UCX_LOOPBACK = {"UCX_NET_DEVICES": "lo"}
# vLLM's own: torch's gloo groups bind the hostname's address (external on some hosts),
# and vLLM's get_ip() is the address of the default route, unless these say otherwise.
LOOPBACK_ENV = {**UCX_LOOPBACK, "GLOO_SOCKET_IFNAME": "lo", "VLLM_HOST_IP": "127.0.0.1"}


# vLLM's own log format, with the year and milliseconds (its default has neither), so the
# routing trace can order its lines among the other components' JSON lines; and its
# NixlConnector's per-request lines (transfers, lease release), which it logs at debug.
LOG_LINE = (
    "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s.%(msecs)03d "
    "[%(fileinfo)s:%(lineno)d] %(message)s"
)
LOG_DATE = "%Y-%m-%d %H:%M:%S"
NIXL_LOGGER = "vllm.distributed.kv_transfer.kv_connector.v1.nixl"
# LOG_LINE read back: "(APIServer pid=7) INFO 2026-12-01 21:00:00.123 [file.py:12] text"
_LOG_LINE_READ = re.compile(
    r"^\((?P<process>[^)]*?) pid=\d+\) (?P<level>[A-Z]+) "
    r"(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(?P<ms>\d{3}) \[(?P<where>[^\]]*)\] (?P<msg>.*)$"
)


def parse_log_line(line: str) -> dict[str, Any] | None:
    """A line written with LOG_LINE as a structured event (local time to epoch seconds), or
    None for anything else an engine prints (banners, tracebacks, uvicorn's access lines)."""
    match = _LOG_LINE_READ.match(line)
    if match is None:
        return None
    when = time.mktime(time.strptime(match["date"], LOG_DATE)) + int(match["ms"]) / 1000
    return {
        "ts": when,
        "level": match["level"].lower(),
        "process": match["process"],
        "where": match["where"],
        "message": match["msg"],
    }


def logging_config() -> dict[str, Any]:
    """vLLM's logging config (VLLM_LOGGING_CONFIG_PATH): its formatter, our format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "vllm": {
                "()": "vllm.logging_utils.NewLineFormatter",
                "format": LOG_LINE,
                "datefmt": LOG_DATE,
            }
        },
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "level": "DEBUG",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            "vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False},
            NIXL_LOGGER: {"level": "DEBUG"},
        },
    }


@dataclass
class EngineCommand:
    """What to exec for one engine; `env` is added to the runner's environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def kv_transfer_config() -> str:
    return json.dumps(
        {"kv_connector": NIXL_CONNECTOR, "kv_role": "kv_both", "kv_buffer_device": "cpu"},
        separators=(",", ":"),
    )


def manifest_args(args: Sequence[str]) -> list[str]:
    """The manifest's vLLM args minus those the runner owns or this vLLM rejects."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in OWNED_WITH_VALUE:
            skip_value = "=" not in arg
            continue
        if name in DROPPED_SWITCHES:
            continue
        kept.append(arg)
    return kept


def command(
    model_dir: Path,
    served_name: str,
    port: int,
    *,
    args: Sequence[str] = (),
    pd: bool = False,
    side_channel_port: int | None = None,
    cores: str | None = None,
    dtype: str = "float32",
    log_config: Path | None = None,
) -> EngineCommand:
    """vLLM's OpenAI server on 127.0.0.1:port serving `model_dir` as `served_name`.

    float32 by default: on CPU, vLLM 0.32 in bfloat16 answered SmolLM2 with nonsense.
    `log_config` is a file holding `logging_config()`; with it the engine also logs each
    request it receives, so the routing trace shows the engine's view.
    """
    argv = [
        str(engines_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    extra = manifest_args(args)
    if not any(a.split("=", 1)[0] == "--dtype" for a in extra):
        argv += ["--dtype", dtype]
    argv += extra
    env = {"VLLM_LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", **compile_cache_env()}
    env.update(LOOPBACK_ENV)
    if log_config is not None:
        env["VLLM_LOGGING_CONFIG_PATH"] = str(log_config)
        if "--enable-log-requests" not in extra:
            argv.append("--enable-log-requests")
    env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    if pd:
        argv += ["--kv-transfer-config", kv_transfer_config()]
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = "127.0.0.1"
        if side_channel_port is not None:
            env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(side_channel_port)
    if cores is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cores
    return EngineCommand(argv, env)
