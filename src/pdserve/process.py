"""Child processes that are started in their own session and always stopped.

Used by the runner (`pdserve up`), the benchmarks and the tests: a process is
started with its output in a log file, readiness is an HTTP probe (never a
sleep), and stopping kills the whole process group so engine workers and
Envoy children cannot outlive their parent.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import psutil

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port-0 binds and outgoing connections' source ports."""
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for a child process to listen on, taken from below the ephemeral range.

    The child binds some time after we choose, and a port from the ephemeral range
    can be taken meanwhile by any outgoing connection or port-0 bind (a readiness
    probe, a KV transfer server). That happened in CI: a sim engine lost its port
    while its neighbours started. Below the range only another explicit chooser
    can collide, and within this process no port is handed out twice.
    """
    low, _ = ephemeral_range()
    for _ in range(200 if low > LOWEST_PORT else 0):
        port = random.randrange(LOWEST_PORT, low)
        if port not in _handed_out and not port_in_use(port, host):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))  # no room below the range: the kernel's choice, race and all
        return sock.getsockname()[1]


def claim_port(port: int) -> None:
    """A port chosen elsewhere for something this process starts (`pdserve up --port`, picked
    by its caller): free until that child binds it, so `free_port` must not hand it out. In
    CI a test's gateway port was handed to a sim engine of the same service, which lost."""
    _handed_out.add(port)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


class ProcessDied(RuntimeError):
    """A child exited while we waited for it; the message carries its log tail."""


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            code = self.popen.returncode if self.popen else None
            raise ProcessDied(
                f"{self.name} exited with status {code}; last log lines:\n{self.tail()}"
            )

    def wait_http(
        self,
        url: str,
        timeout: float,
        on_wait: Callable[[float], None] | None = None,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        """Poll `url` until it answers 200, failing fast if the process dies."""
        wait_http(url, timeout, self.check_alive, on_wait, what=self.name, verify=verify)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL whatever is left after `timeout`."""
        if self.popen is None:
            return None
        stop_group(self.popen.pid, timeout, self.popen)
        return self.popen.returncode


def stop_group(
    pid: int, timeout: float = 10.0, popen: subprocess.Popen[bytes] | None = None
) -> None:
    """Stop the session led by `pid` (we start children with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)

    def gone() -> bool:  # poll() reaps our own child, which would stay a zombie otherwise
        return (popen is None or popen.poll() is not None) and not _group_alive(pid)

    with contextlib.suppress(TimeoutError):  # past it, SIGKILL
        wait_until(gone, timeout, f"process group {pid} to exit")
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)


def pid_alive(pid: object) -> TypeGuard[int]:
    """Takes what a state file holds (an int, or None when a component never started). A
    zombie is not alive."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:
        return True


def _group_alive(pgid: int) -> bool:
    """Whether a member of the group is alive. The kernel counts zombies as members, and in a
    container whose init does not reap they stay forever; so once the leader is gone, the
    members are found by asking the kernel each process's group (no file read) and only
    their states are read."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid_alive(pgid) or any(pid_alive(p) for p in psutil.pids() if _pgid(p) == pgid)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # exited meanwhile
        return None


def wait_until(
    done: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    max_interval: float | None = None,
    abort: Callable[[], None] | None = None,
    on_wait: Callable[[float], None] | None = None,
    detail: Callable[[], str] | None = None,
) -> None:
    """Call `done` until it holds, every `interval` seconds (growing by half each time up to
    `max_interval`, when given: a slow start is not polled fast for minutes). `abort` runs
    before each try and raises to stop at once (a child that exited); `on_wait` gets the
    seconds waited so far. Past `timeout`: TimeoutError naming `what`, and `detail()` (the
    last reason it did not hold)."""
    start = time.monotonic()
    deadline = start + timeout
    delay = interval
    while True:
        if abort is not None:
            abort()
        if done():
            return
        now = time.monotonic()
        if now >= deadline:
            why = f" ({detail()})" if detail is not None else ""
            raise TimeoutError(f"waited {timeout:g}s for {what}{why}")
        if on_wait is not None:
            on_wait(now - start)
        time.sleep(delay)
        if max_interval is not None:
            delay = min(delay * 1.5, max_interval)


def wait_http(
    url: str,
    timeout: float,
    check: Callable[[], None] | None = None,
    on_wait: Callable[[float], None] | None = None,
    what: str | None = None,
    verify: bool | ssl.SSLContext = True,
) -> None:
    """Poll `url` with GET until it returns 200; `check` raises if the server died.

    `verify=False` accepts any certificate (a self-signed HTTPS server on loopback); a
    context verifies as it says (one trusting a run's own CA)."""
    context = verify if isinstance(verify, ssl.SSLContext) else None
    if verify is False:
        context = ssl._create_unverified_context()
    last = "no answer"

    def answers() -> bool:
        nonlocal last
        last = _get(url, context)
        return not last

    wait_until(
        answers,
        timeout,
        f"{what or url} to be ready",
        interval=0.02,
        max_interval=0.5,
        abort=check,
        on_wait=on_wait,
        detail=lambda: last,
    )


def _get(url: str, context: ssl.SSLContext | None) -> str:
    """Why `url` does not answer 200 ("" when it does)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return "" if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def wait_tcp(host: str, port: int, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until something accepts TCP connections on host:port (for gRPC servers)."""

    def accepts() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    wait_until(
        accepts,
        timeout,
        f"{host}:{port} to accept connections",
        interval=0.02,
        max_interval=0.5,
        abort=check,
    )
