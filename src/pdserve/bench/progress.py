"""One status line on stderr, once a second: a long run shows it is alive and keeping up.

Redrawn in place on a terminal; in a log (not a terminal) a line every 5 s, so a CI log
is not flooded.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from pdserve.bench.client import Counters


async def show(counters: Counters, duration_s: float, stream: TextIO = sys.stderr) -> None:
    """Runs until cancelled."""
    tty = stream.isatty()
    start = time.perf_counter()
    every = 1.0 if tty else 5.0
    try:
        while True:
            await asyncio.sleep(every)
            elapsed = time.perf_counter() - start
            line = (
                f"bench {elapsed:5.0f}/{duration_s:.0f} s  sent {counters.sent}  "
                f"done {counters.done}  errors {counters.errors}  "
                f"in flight {counters.sent - counters.done - counters.errors}  "
                f"{counters.done / elapsed:.1f} req/s"
            )
            stream.write(f"\r{line}\033[K" if tty else line + "\n")
            stream.flush()
    finally:
        if tty:
            stream.write("\n")
            stream.flush()
