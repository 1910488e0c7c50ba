"""`pdserve up | status | logs | down | scale`: one service on this machine.

`up` is the supervisor: it owns every child (each in its own session), shows
progress, and stops them all on Ctrl-C, SIGTERM or `down`. With --detach it
re-runs itself in the background and returns once the state file says ready
(or failed, with the reason). The other commands talk to it through the state
folder: PIDs and logs there, scaling through its control port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pdserve.epp import envoy as envoy_defaults
from pdserve.errors import UserError
from pdserve.flags import OneLineParser, duration
from pdserve.process import pid_alive
from pdserve.runner.state import StateDir, default_dir

POOLS = ("prefill", "decode")


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    return {"up": up, "status": status, "logs": logs, "down": down, "scale": scale}[command](rest)


def _state_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"this service's folder of state and logs (default {default_dir()})",
    )


def _state(args: argparse.Namespace) -> StateDir:
    return StateDir(args.state_dir or default_dir())


def _running(state: StateDir) -> dict[str, Any]:
    data = state.read()
    if not data or not pid_alive(data.get("pid")):
        raise UserError(f"no service is running in {state.path} (start one with pdserve up FILE)")
    return data


# --- up ------------------------------------------------------------------------


def up(argv: list[str]) -> int:
    from pdserve.engines import venv
    from pdserve.process import port_in_use
    from pdserve.runner.manifest import load_plan

    ap = OneLineParser(prog="pdserve up", description="run a manifest on this machine")
    ap.add_argument("file", type=Path, help="LLMInferenceService manifest (with its configs)")
    ap.add_argument("--engine", choices=("vllm", "sim"), help="default: vllm when installed")
    ap.add_argument("--port", type=int, default=8080, help="the gateway's port on 127.0.0.1")
    ap.add_argument("--namespace", default=None, help="default: the manifest's, else default")
    ap.add_argument("--detach", action="store_true", help="return once ready, keep running")
    ap.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--route-timeout",
        type=duration,
        default=envoy_defaults.ROUTE_TIMEOUT,
        help="the gateway's bound on a whole answer (0, the default: none)",
    )
    ap.add_argument(
        "--stream-idle-timeout",
        type=duration,
        default=envoy_defaults.STREAM_IDLE_TIMEOUT,
        help="the gateway ends a stream silent this long (default 300s)",
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="engines and sidecars serve HTTPS with a certificate made for this run "
        "(STATE_DIR/tls/tls.crt is its CA); the gateway's port takes HTTP and HTTPS",
    )
    _state_arg(ap)
    args = ap.parse_args(argv)
    state = _state(args)

    previous = state.read()
    if previous and pid_alive(previous.get("pid")) and previous.get("pid") != os.getpid():
        raise UserError(
            f"a service is already running in {state.path}: "
            "stop it with pdserve down, or pass another --state-dir"
        )
    if not args.file.is_file():
        raise UserError(f"{args.file}: no such file")
    kind = args.engine
    if kind is None:
        kind = "vllm" if venv.find() else "sim"
        if kind == "sim":
            print(
                "pdserve up: vLLM is not installed (make engines); using --engine sim",
                file=sys.stderr,
            )
    if kind == "vllm":
        venv.engines_python()  # one-line error naming `make engines` when missing
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: not a port number")
    if port_in_use(args.port):
        raise UserError(f"--port {args.port}: already in use on 127.0.0.1 (pick another --port)")
    plan = load_plan(args.file, args.namespace)
    from pdserve.runner.components import kv_feed

    kv_feed(plan.scheduler_config, 0, kind)  # what the engines cannot serve fails here
    if not args.supervise:  # the supervisor's own log is this run's first
        state.rotate()

    if args.detach and not args.supervise:
        return _detach(argv, state)
    from pdserve.runner.supervisor import run

    timeouts = (args.route_timeout, args.stream_idle_timeout)
    return run(
        plan,
        kind,
        state,
        args.port,
        live=not args.supervise,
        source=str(args.file),
        timeouts=timeouts,
        tls=args.tls,
    )


def _detach(argv: list[str], state: StateDir) -> int:
    """Start the supervisor in its own session and follow its state file until ready."""
    from pdserve.runner.progress import Follower, print_ready

    state.logs.mkdir(parents=True, exist_ok=True)
    state.file.unlink(missing_ok=True)
    log = state.log("supervisor")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pdserve", "up", *argv, "--supervise"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    follower = Follower()
    try:
        while True:
            data = state.read() or {}
            follower.show(data.get("components", []))
            if data.get("status") == "ready" and data.get("pid") == proc.pid:
                follower.close()
                print_ready(data)
                return 0
            code = proc.poll()
            if code is not None or data.get("status") == "failed":
                follower.close()
                reason = data.get("error") or _tail(log)
                print(f"pdserve up: failed to start: {reason}", file=sys.stderr)
                if code is None:
                    _reap(proc)
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        follower.close()
        os.kill(proc.pid, signal.SIGTERM)
        _reap(proc)
        return 130


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Give the supervisor its time to stop everything, then stop what is left by PID."""
    from pdserve.process import stop_group

    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop_group(proc.pid, timeout=10, popen=proc)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- status, logs -------------------------------------------------------------


def status(argv: list[str]) -> int:
    ap = OneLineParser(prog="pdserve status")
    _state_arg(ap)
    ap.add_argument("--json", action="store_true", help="print the state file")
    args = ap.parse_args(argv)
    state = _state(args)
    data = state.read()
    if not data:
        print(f"no service in {state.path}")
        return 1
    alive = pid_alive(data.get("pid"))
    if args.json:
        import json

        print(json.dumps(data, indent=1))
        return 0 if alive else 1
    from pdserve.runner.progress import pools_text

    info = data.get("summary", {})
    pools = pools_text(info.get("pools"))
    print(f"{info.get('name', '?')}: {_condition(data)}  {info.get('url', '')}/v1  {pools}")
    if _orphaned(data):
        print(f"  {_down_hint(data)}")
    if info.get("model_dir"):
        print(f"  tokenizer: {info['model_dir']}")
    if info.get("tls_ca"):
        print(f"  tls: CA {info['tls_ca']} (engines, sidecars: HTTPS only; gateway: both)")
    for row in data.get("components", []):
        print(f"  {_row_text(row)}")
    return 0 if alive else 1


def _condition(data: dict[str, Any]) -> str:
    """The service's state in words: a dead supervisor is neither running nor stopped."""
    said = data.get("status", "?")
    if pid_alive(data.get("pid")):
        return said
    if _orphaned(data):
        running = sum(pid_alive(r.get("pid")) for r in data.get("components", []))
        total = sum(1 for r in data.get("components", []) if r.get("pid"))
        return (
            f"supervisor dead (pid {data.get('pid')} gone while {said}); "
            f"{running} of {total} components still running"
        )
    why = data.get("reason") or data.get("error")
    return f"not running ({said}{': ' + why if why else ''})"


def _orphaned(data: dict[str, Any]) -> bool:
    """The supervisor is gone without having stopped: children or its temp folder remain."""
    if pid_alive(data.get("pid")):
        return False
    children = any(pid_alive(r.get("pid")) for r in data.get("components", []))
    unfinished = data.get("status") in ("starting", "ready", "stopping")
    return children or (unfinished and _scratch(data) is not None)


def _down_hint(data: dict[str, Any]) -> str:
    from pdserve.runner.progress import pdserve_command, state_flag

    return (
        f"{pdserve_command()} down{state_flag(data)} stops them and removes the run's temp folder"
    )


def _row_text(row: dict[str, Any]) -> str:
    live = ("up" if pid_alive(row.get("pid")) else "down") if row.get("pid") else "-"
    restarts = ""
    if row.get("restarts") or row.get("last_exit"):
        restarts = f"restarts {row.get('restarts', 0)} (last exit: {row.get('last_exit')}) "
    return (
        f"{row['name']:<12} {row['kind']:<16} {row['status']:<10} {live:<5} "
        f"port {row.get('port') or '-':<6} pid {row.get('pid') or '-':<8} "
        f"{restarts}{row.get('detail') or ''}"
    ).rstrip()


def logs(argv: list[str]) -> int:
    from pdserve.runner import trace

    ap = OneLineParser(
        prog="pdserve logs", description="a component's log, or the routing trace of requests"
    )
    ap.add_argument("component", nargs="?", help="e.g. epp, envoy, decode-0, sidecar-0")
    ap.add_argument("--last", type=int, default=20, help="trace: the last N requests")
    ap.add_argument("--json", action="store_true", help="trace: one JSON object per request")
    ap.add_argument("--lines", "-n", type=int, default=0, help="component: only the last N lines")
    ap.add_argument(
        "--all", action="store_true", help="component: also the /metrics and /health access lines"
    )
    ap.add_argument(
        "--run", default=None, help="an earlier run: previous (or 1), 2, ... or its folder name"
    )
    _state_arg(ap)
    args = ap.parse_args(argv)
    state = _state(args)
    folder, data = state.run(args.run) if args.run else (state.logs, state.read())
    if args.component is None:
        names = sorted(p.stem for p in folder.glob("*.log"))
        if not names:
            raise UserError(f"no logs in {folder}")
        if args.json:
            print(trace.render_json(folder, args.last, data))
            return 0
        print("components: " + " ".join(names))
        print(trace.render(folder, args.last, data) or "(no requests traced yet)")
        return 0
    path = folder / f"{args.component}.log"
    if not path.is_file():
        have = " ".join(sorted(p.stem for p in folder.glob("*.log")))
        raise UserError(f"no log for {args.component!r} in {folder} (have: {have})")
    lines = path.read_text(errors="replace").splitlines()
    if not args.all:
        lines = [line for line in lines if not _SCRAPE_LINE.search(line)]
    if args.lines:
        lines = lines[-args.lines :]
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


# An access line for a metrics scrape or a health probe (the EPP scrapes every engine every
# 50 ms: in a vLLM engine's log they were 85% of the lines).
_SCRAPE_LINE = re.compile(r'"GET /(metrics|health)[ ?][^"]*" (200|204)')


# --- down, scale ------------------------------------------------------------------


def down(argv: list[str]) -> int:
    from pdserve.process import stop_group, wait_until

    ap = OneLineParser(prog="pdserve down")
    _state_arg(ap)
    args = ap.parse_args(argv)
    state = _state(args)
    data = state.read() or {}
    pids = [data.get("pid"), *(r.get("pid") for r in data.get("components", []))]
    scratch = _scratch(data)
    if not any(pid_alive(p) for p in pids) and scratch is None:
        print(f"nothing running in {state.path}")
        return 0
    pid = data.get("pid")
    orphaned = not pid_alive(pid)
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):  # then what is left is stopped by PID
            wait_until(lambda: not pid_alive(pid), 180, f"supervisor {pid} to exit", interval=0.1)
    # Whatever the supervisor could not stop (it was killed, or hung): stop by PID.
    data = state.read() or data
    for row in data.get("components", []):
        if pid_alive(row.get("pid")):
            stop_group(row["pid"], timeout=10)
    if pid_alive(pid):
        stop_group(pid, timeout=10)
    if scratch is not None:  # its children's TMPDIR: the supervisor removes it unless killed
        shutil.rmtree(scratch, ignore_errors=True)
    if orphaned:
        _record_stopped(state, data, f"pdserve down after the supervisor (pid {pid}) died")
    print(f"stopped {data.get('summary', {}).get('name', 'service')} ({state.path})")
    return 0


def _scratch(data: dict[str, Any]) -> Path | None:
    """The run's temp folder, when the state file names one that is still there. Only a
    folder of ours (scratch_dir's prefix) is ever removed, whatever the file says."""
    path = data.get("tmpdir")
    if not isinstance(path, str) or not Path(path).name.startswith("pdserve-"):
        return None
    return Path(path) if Path(path).is_dir() else None


def _record_stopped(state: StateDir, data: dict[str, Any], reason: str) -> None:
    """What the dead supervisor would have written: `status` then reads stopped, and why."""
    for row in data.get("components", []):
        row["status"] = "stopped"
    state.write({**data, "status": "stopped", "reason": reason})


def scale(argv: list[str]) -> int:
    from pdserve.runner.control import read_token, request

    ap = OneLineParser(prog="pdserve scale", description="resize a pool while serving")
    ap.add_argument("pool", choices=POOLS)
    ap.add_argument("replicas", type=int)
    _state_arg(ap)
    args = ap.parse_args(argv)
    data = _running(_state(args))
    if data.get("status") != "ready":
        raise UserError(f"the service is {data.get('status')}, not ready; try again when ready")
    try:
        out = request(
            data["control_port"],
            "POST",
            "/scale",
            {"pool": args.pool, "replicas": args.replicas},
            token=read_token(_state(args).path),
        )
    except RuntimeError as err:
        raise UserError(str(err)) from err
    for step in out.get("steps", []):
        print(step)
    from pdserve.runner.progress import pools_text

    print(f"pools now {pools_text(out.get('pools'))}")
    return 0
