"""The process that owns a local service's children for as long as it runs.

It keeps the state file current (components, status, the reason it stopped),
serves the control port once ready and watches the children: one that exits is
restarted (LocalService.check). Only Ctrl-C, SIGTERM (`pdserve down`), a failure
at start or a crash loop stop every child it started. Its events (each exit and
restart) are JSON lines in logs/supervisor.log.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

from pdserve.errors import UserError
from pdserve.logs import JsonFormatter
from pdserve.process import ProcessDied
from pdserve.runner.board import Board
from pdserve.runner.plan import Plan
from pdserve.runner.progress import Follower, print_ready
from pdserve.runner.state import StateDir

WATCH_INTERVAL = 0.5


class _Stop(Exception):
    """SIGTERM arrived while starting: stop like on Ctrl-C."""


def _log_to(state: StateDir) -> None:
    """Events go to the supervisor's log file, not stderr: the foreground's live table is
    there (a detached supervisor's stderr is that same file, opened for appending)."""
    handler = logging.FileHandler(state.log("supervisor"))
    handler.setFormatter(JsonFormatter("supervisor"))
    logger = logging.getLogger("pdserve.supervisor")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run(
    plan: Plan,
    kind: str,
    state: StateDir,
    port: int,
    *,
    live: bool,
    source: str,
    timeouts: tuple[float, float] | None = None,
    tls: bool = False,
) -> int:
    import os

    from pdserve.runner.control import serve
    from pdserve.runner.service import LocalService

    record: dict[str, Any] = {
        "pid": os.getpid(),
        "status": "starting",
        "file": source,
        "state_dir": str(state.path),
        "started": time.time(),  # names the run's folder once the next up moves its logs
    }
    lock = threading.Lock()
    follower = Follower() if live else None

    def save(**fields: Any) -> None:
        with lock:
            record.update(fields)
            record["components"] = board.snapshot()
            record["summary"] = service.summary()
            record["tmpdir"] = service.tmpdir  # `down` removes it if we die
            state.write(record)
            if follower is not None:
                follower.show(record["components"])

    board = Board(on_change=lambda: save())
    service = LocalService(plan, kind, state, port, board, timeouts=timeouts, tls=tls)
    stop = threading.Event()
    started = False

    def on_term(signum: int, frame: object) -> None:
        stop.set()
        if not started:  # a start is minutes of waits: break out of them at once
            raise _Stop()

    state.logs.mkdir(parents=True, exist_ok=True)
    _log_to(state)
    signal.signal(signal.SIGTERM, on_term)
    code = 0
    reason = "stopped by pdserve down (SIGTERM)"
    try:
        save()
        service.start()
        control = serve(service)
        started = True
        save(status="ready", control_port=control.server_address[1])
        if follower is not None:
            follower.close()
            print_ready(record)
        while not stop.wait(WATCH_INTERVAL):  # watching, not waiting for readiness
            service.check()
    except (ProcessDied, TimeoutError, RuntimeError, UserError, OSError) as err:
        # After the start only a crash loop (or the control port's socket) lands here.
        code, reason = 1, str(err) if started else f"failed at start: {err}"
        save(status="failed", error=str(err), reason=reason)
        if follower is not None:
            follower.close()
        print(f"pdserve up: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        reason = "stopped by Ctrl-C"
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not code:
            save(status="stopping", reason=reason)
        service.stop()
        if follower is not None:
            follower.close()
        save(status="failed" if code else "stopped", reason=reason)
    return code
