"""A local service: the processes of one LLMInferenceService on this machine.

Start order follows the data path backwards: model folder, engines (and each
decode engine's sidecar), the EPP with an endpoints file, then Envoy; ready when
every component's health check passes and the gateway itself answers
GET /v1/models. An engine joins the EPP's endpoint list only once it is healthy.
Removing one goes the other way: out of the endpoint list, the EPP confirms,
its in-flight requests drain, then its sidecar and engine stop.

Once started, every component is watched as a kubelet watches containers: one that
exits leaves the endpoint list, is restarted on its ports after a doubling backoff, and
rejoins once its health check passes. An engine and its sidecar restart each on its own,
as two containers of one pod do. Only a crash loop (RestartPolicy.limit restarts within
RestartPolicy.window seconds) stops the service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdserve import endpoints, promtext
from pdserve.endpoints import Entry
from pdserve.engines import model as models
from pdserve.engines import placement, vllm
from pdserve.engines.vllm import EngineCommand
from pdserve.logs import event
from pdserve.process import ManagedProcess, ProcessDied, claim_port, free_port, wait_until
from pdserve.runner import components
from pdserve.runner.board import Board
from pdserve.runner.components import EngineSlot
from pdserve.runner.plan import Plan
from pdserve.runner.state import StateDir
from pdserve.tls import CERT_FILE, KEY_FILE
from pdserve.wire import (
    METRIC_RUNNING,
    METRIC_WAITING,
    ROLE_DECODE,
    ROLE_LABEL,
    ROLE_PREFILL,
)

ENGINE_TIMEOUT = {"vllm": 900.0, "sim": 120.0}
COMPONENT_TIMEOUT = 60.0
DRAIN_TIMEOUT = 120.0
PROBE_TIMEOUT = 1.0  # one health probe of a restarting component, made while watching

log = logging.getLogger("pdserve.supervisor")


class CrashLoop(RuntimeError):
    """A component exited more often than the restart policy allows: the service stops."""


@dataclass(frozen=True)
class RestartPolicy:
    """kubelet's CrashLoopBackOff, scaled to one machine: kubelet waits 10 s doubling to
    5 min, but our children start in seconds (sim) and a lost engine costs P/D at once.
    The PDSERVE_RESTART_* variables exist so tests can reach the limit quickly."""

    first: float = 1.0  # seconds before the first restart, doubled after each
    cap: float = 30.0
    reset_after: float = 60.0  # healthy this long: the next exit waits `first` again
    limit: int = 5  # restarts allowed within `window`; one more exit stops the service
    window: float = 300.0

    @classmethod
    def from_env(cls) -> RestartPolicy:
        env = os.environ
        return cls(
            first=float(env.get("PDSERVE_RESTART_BACKOFF", cls.first)),
            limit=int(env.get("PDSERVE_RESTART_LIMIT", cls.limit)),
            window=float(env.get("PDSERVE_RESTART_WINDOW", cls.window)),
        )

    def delay(self, previous: float) -> float:
        return self.first if previous <= 0 else min(previous * 2, self.cap)


@dataclass
class Watch:
    """One started component as the watch loop sees it."""

    proc: ManagedProcess
    health: str  # answers 200 once the component serves again
    timeout: float  # to pass `health` after a restart
    settled: Callable[[], str] = lambda: ""  # run once healthy; returns the board's detail
    phase: str = "running"  # running | backoff (waiting to restart) | starting
    due: float = 0.0  # backoff: when to restart; starting: when to give up
    backoff: float = 0.0  # the last delay used (0: none since healthy long enough)
    restarts: int = 0
    history: list[float] = field(default_factory=list)  # monotonic times of restarts
    healthy_since: float = field(default_factory=time.monotonic)


def exit_text(code: int | None) -> str:
    """`code 1` or `signal 9 (SIGKILL)`: Popen gives a signal as a negative code."""
    if code is None:
        return "unknown"
    if code >= 0:
        return f"code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


@dataclass
class Replica:
    """One engine of a pool, with the sidecar in front of it when it decodes for P/D."""

    role: str
    index: int
    slot: EngineSlot
    engine: ManagedProcess
    sidecar: ManagedProcess | None = None
    sidecar_port: int | None = None

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def endpoint_port(self) -> int:
        """What the EPP routes to: the sidecar when there is one."""
        return self.sidecar_port or self.slot.port

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.sidecar, self.engine) if p is not None]


# vLLM binds ZMQ IPC sockets at TMPDIR/<uuid4>; a Unix socket path holds at most 107 bytes.
SOCKET_DIR_MAX = 107 - len("/") - 36


def scratch_dir() -> Path:
    """A fresh folder in TMPDIR, or in /tmp when TMPDIR is too deep for vLLM's sockets."""
    path = Path(tempfile.mkdtemp(prefix="pdserve-"))
    if len(os.fsencode(path)) <= SOCKET_DIR_MAX:
        return path
    path.rmdir()
    return Path(tempfile.mkdtemp(prefix="pdserve-", dir="/tmp"))


class LocalService:
    def __init__(
        self,
        plan: Plan,
        kind: str,
        state: StateDir,
        gateway_port: int,
        board: Board,
        timeouts: tuple[float, float] | None = None,  # the gateway's route, stream idle
        tls: bool = False,
    ) -> None:
        self.plan = plan
        # --tls: the run's certificate folder (made at start), and a context trusting it.
        self.tls = state.path / "tls" if tls else None
        self.client_tls: ssl.SSLContext | None = None
        self.timeouts = timeouts
        self._eds_version = 0
        self.kind = kind
        self.state = state
        self.gateway_port = gateway_port
        claim_port(gateway_port)  # Envoy binds it last: no engine may be given it first
        self.board = board
        self.model_dir: Path | None = None
        self.pools: dict[str, list[Replica]] = {ROLE_PREFILL: [], ROLE_DECODE: []}
        self.epp: ManagedProcess | None = None
        self.envoy: ManagedProcess | None = None
        self.epp_metrics_port = 0
        self.lock = threading.RLock()  # one scale at a time; held while engines start
        # Who is running, and whether we are stopping: held only for moments, never across a
        # wait, so `down` during a minutes-long scale stops at once and misses no engine.
        self._members = threading.Lock()
        self._retiring: list[Replica] = []
        self._next_index = {ROLE_PREFILL: 0, ROLE_DECODE: 0}
        self._stopping = False
        self._scratch: Path | None = None
        self._log_config_written = False
        self.policy = RestartPolicy.from_env()
        self._watches: dict[str, Watch] = {}  # started and healthy once; guarded by _members
        self.envoy_admin_port = 0
        # The EPP's KV-event port is chosen now: engines start first and publish to it.
        self.feed = components.kv_feed(plan.scheduler_config, free_port(), kind)

    # --- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def endpoints_file(self) -> Path:
        return self.state.path / "endpoints.json"

    @property
    def pool_eds_file(self) -> Path:
        return self.state.path / "pool-eds.json"

    @property
    def prefill_targets_file(self) -> Path:
        return self.state.path / "prefill-targets.json"

    @property
    def scratch(self) -> Path:
        """The children's TMPDIR, removed on stop: vLLM leaves IPC sockets and files in it."""
        if self._scratch is None:
            self._scratch = scratch_dir()
        return self._scratch

    @property
    def tmpdir(self) -> str | None:
        """The scratch folder, once made: recorded so `down` removes it if we are killed."""
        return str(self._scratch) if self._scratch is not None else None

    @property
    def scheme(self) -> str:
        """How engines and sidecars are called (the gateway's listener stays plain)."""
        return "https" if self.tls else "http"

    def _at(self, port: int | None, path: str = "") -> str:
        return f"{self.scheme}://127.0.0.1:{port}{path}"

    def _make_certificate(self) -> None:
        """One certificate for 127.0.0.1/localhost, its own CA, shared by every component
        of the run (a restarted one too) and made anew by each run: no key is reused."""
        from pdserve.tls import self_signed, trusting

        if self.tls is None:
            return
        self.tls.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert, _ = self_signed(self.tls)
        self.client_tls = trusting(cert)

    def start(self) -> None:
        self.state.logs.mkdir(parents=True, exist_ok=True)
        _ = self.scratch
        self._make_certificate()
        self.model_dir = self._resolve_model()
        wanted = [(ROLE_DECODE, self.plan.decode.replicas)]
        if self.plan.prefill is not None:
            wanted.insert(0, (ROLE_PREFILL, self.plan.prefill.replicas))
        total = sum(n for _, n in wanted)
        started = [self._launch(role, total) for role, n in wanted for _ in range(n)]
        self._write_endpoints()
        self._start_router()
        for replica in started:
            self._await(replica)
        self._write_endpoints()
        self._await_router()
        with self._members:
            for replica in started:
                self._watch_replica(replica)
            self._watch_router()

    def stop(self) -> None:
        """Stop everything: the gateway first so no new request enters, engines last."""
        with self._members:
            self._stopping = True
            procs = self._processes() + [p for r in self._retiring for p in r.processes()]
        for proc in procs:
            if proc.alive():
                self.board.set(proc.name, status="stopping")
            proc.stop(timeout=15)
            self.board.set(proc.name, status="stopped")
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if self.tls is not None:  # the certificate stays, to check what the run served
            (self.tls / KEY_FILE).unlink(missing_ok=True)

    def check(self) -> None:
        """Restart what exited, admit what became healthy; CrashLoop past the policy."""
        with self._members:
            watches = [] if self._stopping else list(self._watches.values())
        for watch in watches:
            with self._members:  # retire/stop may have taken it meanwhile
                if not self._stopping and self._watches.get(watch.proc.name) is watch:
                    self._step(watch, time.monotonic())

    def _step(self, w: Watch, now: float) -> None:
        if w.phase == "backoff":
            if now >= w.due:
                self._restart(w, now)
        elif not w.proc.alive():
            self._exited(w, now)
        elif w.phase == "starting":
            if not _get(w.health, self.client_tls):
                self._healthy(w, now)
            elif now >= w.due:
                w.proc.stop(timeout=5)
                self._exited(w, now, f"not healthy {w.timeout:g}s after its restart")
        elif w.backoff and now - w.healthy_since >= self.policy.reset_after:
            w.backoff = 0.0

    def _exited(self, w: Watch, now: float, why: str = "") -> None:
        name, code = w.proc.name, w.proc.popen.returncode if w.proc.popen else None
        last = exit_text(code) + (f", {why}" if why else "")
        recent = [t for t in w.history if now - t < self.policy.window]
        if len(recent) >= self.policy.limit:
            event(
                log,
                "crash_loop",
                logging.ERROR,
                child=name,
                exit=last,
                exit_code=code,
                restarts=w.restarts,
            )
            self.board.set(name, status="failed", last_exit=last, detail="crash loop")
            raise CrashLoop(
                f"{name} crash loop: exited {len(recent) + 1} times within "
                f"{self.policy.window:g}s (last: {last}); restart limit {self.policy.limit}"
            )
        w.phase, w.backoff = "backoff", self.policy.delay(w.backoff)
        w.due = now + w.backoff
        event(
            log,
            "component_exited",
            child=name,
            pid=w.proc.pid,
            exit=last,
            exit_code=code,
            restarts=w.restarts,
            restart_in_s=w.backoff,
        )
        self.board.set(name, status="down", last_exit=last, detail=f"restart in {w.backoff:g}s")
        self._write_endpoints()  # its endpoint leaves the EPP's list while it is down

    def _restart(self, w: Watch, now: float) -> None:
        w.proc.start()  # same argv and ports; the log continues after the crash's lines
        w.phase, w.due = "starting", now + w.timeout
        w.restarts += 1
        w.history = [t for t in w.history if now - t < self.policy.window] + [now]
        event(log, "component_restarted", child=w.proc.name, pid=w.proc.pid, restarts=w.restarts)
        self.board.set(
            w.proc.name, status="restarting", pid=w.proc.pid, restarts=w.restarts, detail=""
        )

    def _healthy(self, w: Watch, now: float) -> None:
        w.phase, w.healthy_since = "running", now
        event(log, "component_ready", child=w.proc.name, pid=w.proc.pid, restarts=w.restarts)
        self.board.set(w.proc.name, status="ready", detail=w.settled())
        self._write_endpoints()  # rejoins once healthy (an engine: and its sidecar too)

    def _watch_replica(self, replica: Replica) -> None:
        """Called with _members held, once the replica passed its first health check."""
        timeout = ENGINE_TIMEOUT[self.kind]
        engine_url = self._at(replica.slot.port, "/health")
        self._add_watch(Watch(replica.engine, engine_url, timeout, lambda: self._place(replica)))
        if replica.sidecar is not None:
            url = self._at(replica.sidecar_port, "/health")
            self._add_watch(Watch(replica.sidecar, url, COMPONENT_TIMEOUT))

    def _watch_router(self) -> None:
        assert self.epp is not None and self.envoy is not None
        metrics = f"http://127.0.0.1:{self.epp_metrics_port}/metrics"
        self._add_watch(Watch(self.epp, metrics, COMPONENT_TIMEOUT))
        # Envoy's own readiness, not a request through it: that needs the EPP up as well.
        admin = f"http://127.0.0.1:{self.envoy_admin_port}/ready"
        self._add_watch(Watch(self.envoy, admin, COMPONENT_TIMEOUT, lambda: f"{self.url}/v1"))

    def _add_watch(self, watch: Watch) -> None:
        self._watches[watch.proc.name] = watch

    def _unwatch(self, replica: Replica) -> None:
        for proc in replica.processes():
            self._watches.pop(proc.name, None)

    def _processes(self) -> list[ManagedProcess]:
        procs = [p for p in (self.envoy, self.epp) if p is not None]
        for pool in self.pools.values():
            for replica in pool:
                procs += replica.processes()
        return procs

    # --- scaling -------------------------------------------------------------

    def scale(self, role: str, replicas: int, progress: Callable[[str], None] = print) -> None:
        if role == ROLE_PREFILL and self.plan.prefill is None:
            raise ValueError("this service has no prefill pool (no spec.prefill)")
        if replicas < 0 or (role == ROLE_DECODE and replicas < 1):
            raise ValueError(f"{role} replicas must be >= {0 if role == ROLE_PREFILL else 1}")
        with self.lock:
            pool = self.pools[role]
            while len(pool) < replicas:
                with self._members:
                    if self._stopping:
                        raise RuntimeError("the service is stopping")
                    replica = self._launch(role, len(pool) + 1)
                progress(f"started {replica.name}")
                try:
                    self._await(replica)
                except (ProcessDied, TimeoutError):
                    with self._members:
                        pool.remove(replica)  # the service keeps serving with the pool it had
                    for proc in replica.processes():
                        proc.stop()
                        self.board.drop(proc.name)
                    raise
                with self._members:
                    self._watch_replica(replica)
                self._write_endpoints()
                progress(f"{replica.name} ready and routed")
            while len(pool) > replicas and not self._stopping:
                self._retire(pool[-1], progress)

    def _retire(self, replica: Replica, progress: Callable[[str], None]) -> None:
        with self._members:
            self.pools[replica.role].remove(replica)
            self._unwatch(replica)  # stopping it is no crash
            self._retiring.append(replica)  # still ours to stop if `down` comes meanwhile
        self._write_endpoints()
        self._await_epp_endpoints()
        progress(f"{replica.name} out of the endpoint list; draining")
        self.board.set(replica.engine.name, status="draining")
        _drain(self._at(replica.slot.port), self.client_tls)
        for proc in replica.processes():  # sidecar first: it finishes its in-flight requests
            proc.stop(timeout=DRAIN_TIMEOUT)
            self.board.drop(proc.name)
        with self._members:
            self._retiring.remove(replica)
        self._write_endpoints()  # out of the sidecars' list only now that it is stopped
        progress(f"{replica.name} stopped")

    # --- parts -------------------------------------------------------------

    def _resolve_model(self) -> Path | None:
        uri = self.plan.model_uri
        if self.kind == "sim" and not models.is_local(uri):
            # The sim engine only needs a tokenizer; use the cached folder if there is one.
            cached = models.cached(uri)
            self.board.set("model", "model", status="ready", detail=str(cached or "(none)"))
            return cached
        self.board.set("model", "model", status="starting", detail=uri)

        def progress(text: str) -> None:
            self.board.set("model", detail=text)

        path = models.resolve(uri, progress)
        self.board.set("model", status="ready", detail=str(path))
        return path

    def _launch(self, role: str, total: int) -> Replica:
        """Start an engine (and its sidecar for P/D decode); readiness is awaited later."""
        index = self._next_index[role]
        self._next_index[role] += 1
        slot = EngineSlot(free_port(), free_port(), self._cores(total))
        pool_plan = self.plan.pool(role)
        sidecar_port = free_port() if self.plan.pd and role == ROLE_DECODE else None
        # KV events name the engine as the EPP's endpoint list does: its sidecar, if any
        feed = (self.feed, f"127.0.0.1:{sidecar_port or slot.port}") if self.feed else None
        log_config = self._vllm_log_config()
        cmd = components.engine(
            self.kind, self.plan, pool_plan, self.model_dir, slot, log_config, feed, self.tls
        )
        name = f"{role}-{index}" if self.plan.pd else f"engine-{index}"
        engine = self._spawn(name, f"{self.kind} engine", cmd, slot.port)
        replica = Replica(role, index, slot, engine)
        if sidecar_port is not None:
            port = sidecar_port
            cmd = components.sidecar(
                self.plan, port, slot.port, self.prefill_targets_file, self.tls
            )
            replica.sidecar = self._spawn(f"sidecar-{index}", "sidecar", cmd, port)
            replica.sidecar_port = port
        self.pools[role].append(replica)
        return replica

    def _vllm_log_config(self) -> Path | None:
        """Written on the first engine's start, read by every engine of this run."""
        if self.kind != "vllm":
            return None
        path = self.state.path / "vllm-logging.json"
        if not self._log_config_written:
            path.write_text(json.dumps(vllm.logging_config(), indent=1))
            self._log_config_written = True
        return path

    def _cores(self, total: int) -> str | None:
        """vLLM CPU engines get their own core (a lone engine gets them all); sims float."""
        if self.kind != "vllm":
            return None
        lone = total <= 1 and not any(self.pools.values())
        taken = [r.slot.cores or "" for pool in self.pools.values() for r in pool]
        return placement.choose_cores(sorted(os.sched_getaffinity(0)), taken, lone)

    def _spawn(self, name: str, kind: str, cmd: EngineCommand, port: int) -> ManagedProcess:
        env = {**os.environ, **cmd.env, "TMPDIR": str(self.scratch)}
        proc = ManagedProcess(name, cmd.argv, self.state.log(name), env=env)
        proc.log_path.unlink(missing_ok=True)
        proc.start()
        self.board.set(
            name, kind, status="starting", pid=proc.pid, port=port, log=str(proc.log_path)
        )
        return proc

    def _await(self, replica: Replica) -> None:
        timeout = ENGINE_TIMEOUT[self.kind]
        for proc, port in (
            (replica.engine, replica.slot.port),
            (replica.sidecar, replica.sidecar_port),
        ):
            if proc is None:
                continue
            proc.wait_http(
                self._at(port, "/health"),
                timeout if proc is replica.engine else COMPONENT_TIMEOUT,
                verify=self.client_tls or True,
            )
            detail = self._place(replica) if proc is replica.engine else ""
            self.board.set(proc.name, status="ready", detail=detail)

    def _place(self, replica: Replica) -> str:
        """Confine a healthy vLLM engine to its cores; the summary is its board detail."""
        proc = replica.engine
        if replica.slot.cores is None or not proc.pid:
            return ""
        # Idle now: the moment to tell pollers apart (see engines/placement.py).
        return placement.place(proc.pid, placement.parse_cores(replica.slot.cores)).summary()

    def _start_router(self) -> None:
        config = self.state.path / "epp-config.yaml"
        text, events = self.plan.scheduler_config, free_port()
        if self.feed is not None:
            events = self.feed.port
            text = components.localize_epp_config(text, events, self.model_dir)
        config.write_text(text)
        grpc, health, self.epp_metrics_port = free_port(), free_port(), free_port()
        ports = (grpc, health, self.epp_metrics_port, events)
        cmd = components.epp(self.plan, config, self.endpoints_file, ports, self.tls)
        self.epp = self._spawn("epp", "endpoint picker", cmd, grpc)
        from pdserve.epp import envoy

        self.envoy_admin_port = admin = free_port()
        route, idle = self.timeouts or (envoy.ROUTE_TIMEOUT, envoy.STREAM_IDLE_TIMEOUT)
        fail_open = self.plan.failure_mode == "FailOpen"
        self._write_pool_eds(self.endpoints())  # Envoy reads the file as it starts
        bootstrap = envoy.bootstrap(
            self.gateway_port,
            grpc,
            admin,
            route_prefixes=[self.plan.route_prefix],
            route_timeout=route,
            stream_idle_timeout=idle,
            pool=self.pool_eds_file,
            fail_open=fail_open,
            body_mode="BUFFERED" if fail_open else "FULL_DUPLEX_STREAMED",
        )
        if self.tls is not None:
            envoy.secure_upstreams(bootstrap, self.tls / CERT_FILE)
            envoy.accept_tls(bootstrap, self.tls / CERT_FILE, self.tls / KEY_FILE)
        envoy_file = self.state.path / "envoy.json"
        envoy_file.write_text(json.dumps(bootstrap, indent=1))
        cmd = components.envoy(envoy_file, base_id=self.gateway_port)
        self.envoy = self._spawn("envoy", "gateway", cmd, self.gateway_port)

    def _await_router(self) -> None:
        assert self.epp is not None and self.envoy is not None
        self.epp.wait_http(f"http://127.0.0.1:{self.epp_metrics_port}/metrics", COMPONENT_TIMEOUT)
        self.board.set("epp", status="ready")
        self.envoy.wait_http(f"{self.url}/v1/models", COMPONENT_TIMEOUT)
        self.board.set("envoy", status="ready", detail=f"{self.url}/v1")

    def endpoints(self) -> list[Entry]:
        """The EPP's view: replicas whose engine and sidecar are both up and healthy."""
        replicas = [r for pool in self.pools.values() for r in pool]
        return [self._entry(r) for r in replicas if all(map(self._serving, r.processes()))]

    def prefill_targets(self) -> list[Entry]:
        """What the sidecars may prefill on: every replica of ours, down or draining too. The
        EPP re-reads its file every 0.25 s and may still name a replica that just left it; a
        sidecar refusing that pick (403) would lose a request its decode-only fallback saves.
        Its ports stay the runner's own, so the SSRF guard loses nothing."""
        replicas = [*self.pools[ROLE_PREFILL], *self._retiring]
        return [self._entry(r) for r in replicas if r.role == ROLE_PREFILL]

    def _entry(self, replica: Replica) -> Entry:
        return Entry(
            address="127.0.0.1",
            port=replica.endpoint_port,
            labels={ROLE_LABEL: self.plan.pool(replica.role).role, "pdserve/name": replica.name},
        )

    def _serving(self, proc: ManagedProcess) -> bool:
        row = self.board.rows.get(proc.name)
        return proc.alive() and row is not None and row.status == "ready"

    def _write_endpoints(self) -> None:
        """The sidecars' list first: a replica is allowed before the EPP can pick it."""
        endpoints.write(self.prefill_targets_file, self.prefill_targets())
        serving = self.endpoints()
        endpoints.write(self.endpoints_file, serving)
        self._write_pool_eds(serving)

    def _write_pool_eds(self, serving: list[Entry]) -> None:
        """The gateway's pool cluster: the endpoints a decode profile may pick, where the EPP's
        choice, its fallback on a retry, and a request it could not route (failing open) go;
        replaced atomically (Envoy follows renames)."""
        from pdserve.epp import envoy

        self._eds_version += 1
        decode = [(e.address, e.port) for e in serving if e.labels.get(ROLE_LABEL) != ROLE_PREFILL]
        doc = envoy.eds_document(decode, self._eds_version)
        tmp = self.pool_eds_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.pool_eds_file)

    def _await_epp_endpoints(self) -> None:
        """Wait until the EPP reports the endpoint count we wrote (it re-reads the file)."""
        want = len(self.endpoints())

        def reported() -> bool:
            seen = _metric(f"http://127.0.0.1:{self.epp_metrics_port}", "inference_pool_ready_pods")
            return seen is None or int(seen) == want

        # Not fatal: the drain that follows still waits for the engine's requests to finish.
        with contextlib.suppress(TimeoutError):
            wait_until(reported, COMPONENT_TIMEOUT, f"the EPP to report {want} endpoints")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.plan.name,
            "namespace": self.plan.namespace,
            "model": self.plan.served_name,
            "engine": self.kind,
            "url": self.url,
            "route": f"{self.url}{self.plan.route_prefix}/v1",
            "pools": {role: len(pool) for role, pool in self.pools.items() if pool or self.plan.pd},
            "endpoints_file": str(self.endpoints_file),
            # The served name is not a hub id: load generators need the tokenizer's folder.
            "model_dir": str(self.model_dir) if self.model_dir else None,
            # --tls: engines and sidecars serve HTTPS; this CA verifies them.
            "tls_ca": str(self.tls / CERT_FILE) if self.tls else None,
        }


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    """Why url does not answer 200 ("" when it does), asked once and briefly; `context`
    verifies an https url (an http one ignores it)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT, context=context) as resp:
            return "" if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except OSError as err:
        return str(err)


def _metric(url: str, name: str, context: ssl.SSLContext | None = None) -> float | None:
    """Sum of a metric's samples at url/metrics; None when the server does not export it."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2, context=context) as resp:
            return promtext.total(resp.read().decode(), name)
    except OSError:
        return None


def _drain(engine_url: str, context: ssl.SSLContext | None = None) -> None:
    """Wait until the engine has no running or waiting request (at most DRAIN_TIMEOUT: the
    engine is stopped then anyway)."""

    def idle() -> bool:
        running = _metric(engine_url, METRIC_RUNNING, context)
        waiting = _metric(engine_url, METRIC_WAITING, context)
        return running is None or (running + (waiting or 0)) == 0

    with contextlib.suppress(TimeoutError):
        wait_until(idle, DRAIN_TIMEOUT, f"{engine_url} to finish its requests")
