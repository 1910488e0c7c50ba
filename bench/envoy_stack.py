"""Zero-cost sim engines, `pdserve epp` and Envoys on free ports, for the benches that measure
the ext_proc hop (epp_envoy.py, epp_large_prompts.py): one start-up, so their numbers come from
the same stack."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pdserve.epp import envoy
from pdserve.process import ManagedProcess, free_port, wait_tcp

PDSERVE = [sys.executable, "-m", "pdserve"]
QUIET = ("--zero-cost", "--log-level", "warning")
BODY_MODES = ("FULL_DUPLEX_STREAMED", "BUFFERED")


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, []

    def start(self, name: str, argv: list[str], health: str | None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.tmp / f"{name}.log").start()
        self.procs.append(proc)
        if health:
            proc.wait_http(health, timeout=90)
        return proc

    def envoy(self, name: str, port: int, cfg: dict) -> None:
        admin = cfg["admin"]["address"]["socket_address"]["port_value"]
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(cfg))
        argv = [str(envoy.binary()), "-c", str(path), "--base-id", str(port)]
        self.start(name, [*argv, "--log-level", "warn"], f"http://127.0.0.1:{admin}/ready")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def add_body_mode(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--body-mode", default=BODY_MODES[0], choices=BODY_MODES)


def in_fleet(run: Callable[[Fleet, argparse.Namespace], None], args: argparse.Namespace) -> None:
    """Run a bench in a scratch folder (the processes' logs) and stop what it started."""
    with tempfile.TemporaryDirectory() as d:
        fleet = Fleet(Path(d))
        try:
            run(fleet, args)
        finally:
            fleet.stop()


def engines(fleet: Fleet, extra: Sequence[str] = ()) -> list[str]:
    """Two zero-cost sim engines serving `sim`; their host:port."""
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        argv = [*PDSERVE, "sim-engine", "--port", str(port), "--served-model-name", "sim"]
        fleet.start(f"engine{i}", [*argv, *extra, *QUIET], f"http://127.0.0.1:{port}/health")
    return [f"127.0.0.1:{p}" for p in ports]


def epp(fleet: Fleet, endpoints: str, extra: Sequence[str]) -> tuple[ManagedProcess, int, int]:
    """`pdserve epp` over `endpoints`, once its gRPC and metrics ports answer; the process,
    its gRPC port and its metrics port."""
    grpc, health, metrics = free_port(), free_port(), free_port()
    argv = [*PDSERVE, "epp", "--host", "127.0.0.1", "--endpoints", endpoints]
    argv += ["--grpc-port", str(grpc), "--grpc-health-port", str(health)]
    argv += ["--metrics-port", str(metrics), *extra]
    proc = fleet.start("epp", argv, None)
    wait_tcp("127.0.0.1", grpc, 60, proc.check_alive)
    proc.wait_http(f"http://127.0.0.1:{metrics}/metrics", 60)
    return proc, grpc, metrics


def gateways(fleet: Fleet, grpc: int, body_mode: str) -> tuple[int, int]:
    """Envoy with the routing filter to the EPP on `grpc`, and Envoy without ext_proc
    (ORIGINAL_DST routing only); their ports."""
    gw_epp, gw_plain = free_port(), free_port()
    cfg = envoy.bootstrap(gw_epp, grpc, free_port(), [], body_mode, watch=False)
    fleet.envoy("envoy-epp", gw_epp, cfg)
    plain = envoy.bootstrap(gw_plain, grpc, free_port(), [], ext_proc=False)
    fleet.envoy("envoy-plain", gw_plain, plain)
    return gw_epp, gw_plain
