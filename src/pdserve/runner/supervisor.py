"""The process that owns a local service's children for as long as it runs.

It keeps the state file current (components, status, the reason of a failure),
serves the control port once ready, watches for components that die, and on
Ctrl-C, SIGTERM (`pdserve down`) or a failure stops every child it started.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

from pdserve.errors import UserError
from pdserve.process import ProcessDied
from pdserve.runner.board import Board
from pdserve.runner.plan import Plan
from pdserve.runner.progress import Follower, print_ready
from pdserve.runner.state import StateDir

WATCH_INTERVAL = 0.5


class _Stop(Exception):
    """SIGTERM arrived: stop like on Ctrl-C."""


def run(plan: Plan, kind: str, state: StateDir, port: int, *, live: bool, source: str) -> int:
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
            state.write(record)
            if follower is not None:
                follower.show(record["components"])

    board = Board(on_change=lambda: save())
    service = LocalService(plan, kind, state, port, board)

    def on_term(signum: int, frame: object) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        save()
        service.start()
        control = serve(service)
        save(status="ready", control_port=control.server_address[1])
        if follower is not None:
            follower.close()
            print_ready(record)
        while True:
            service.check()
            time.sleep(WATCH_INTERVAL)  # watching for crashes, not waiting for readiness
    except (ProcessDied, TimeoutError, RuntimeError, UserError, OSError) as err:
        code = 1
        save(status="failed", error=str(err))
        if follower is not None:
            follower.close()
        print(f"pdserve up: {err}", file=sys.stderr)
    except (KeyboardInterrupt, _Stop):
        save(status="stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        service.stop()
        if follower is not None:
            follower.close()
        save(status="failed" if code else "stopped")
    return code
