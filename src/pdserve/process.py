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
        verify: bool = True,
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None and not _group_alive(pid):
                return
        elif not _group_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists"; treat a group whose only member is a reaped zombie as gone.
    return _has_live_member(pgid)


def proc_stat(pid: int, tid: int | None = None) -> list[str] | None:
    """The fields of /proc/PID/stat (or of one thread's) after the command name: state, ppid,
    pgrp, ... (the name may hold spaces and parentheses). None once the process is gone."""
    path = Path("/proc", str(pid), *(("task", str(tid)) if tid is not None else ()), "stat")
    try:
        return path.read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _has_live_member(pgid: int) -> bool:
    proc = Path("/proc")
    if not proc.exists():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        rest = proc_stat(int(entry.name))
        if rest and len(rest) >= 3 and int(rest[2]) == pgid and rest[0] != "Z":
            return True
    return False


def wait_http(
    url: str,
    timeout: float,
    check: Callable[[], None] | None = None,
    on_wait: Callable[[float], None] | None = None,
    what: str | None = None,
    verify: bool = True,
) -> None:
    """Poll `url` with GET until it returns 200; `check` raises if the server died.

    `verify=False` accepts any certificate (a self-signed HTTPS server on loopback)."""
    context = None if verify else ssl._create_unverified_context()
    start = time.monotonic()
    deadline = start + timeout
    delay = 0.02
    last_error = "no answer"
    while True:
        if check is not None:
            check()
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
                last_error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as err:
            last_error = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            last_error = str(getattr(err, "reason", err))
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"{what or url} not ready after {timeout:.0f}s ({last_error})")
        if on_wait is not None:
            on_wait(now - start)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def wait_tcp(host: str, port: int, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until something accepts TCP connections on host:port (for gRPC servers)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if check is not None:
            check()
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} not accepting connections after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
