"""Keeping a CPU engine on the cores it was given (Linux).

Two things in vLLM's CPU build with the NixlConnector undo a core-per-engine layout
(measured here with vLLM 0.32 and NIXL 1.5):
- the connector pins the worker's main thread, the one that runs the model when
  `OMP_NUM_THREADS` is 1, to the last core of each NUMA node (meant to keep KV loading off
  the model's cores on a large host); with one engine per core, every engine's model ends
  up on the same last core;
- NIXL's UCX progress thread polls with a zero timeout, a whole core per engine even idle.
On 2 cores this made a prefill of 500 tokens take 4-12 s instead of 0.9 s. So once an
engine answers /health, the runner confines every thread of its process tree to the
engine's cores and gives threads that spin while the engine is idle the lowest priority:
the model gets the core, the poller what is left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PROC = Path("/proc")
# A thread runnable in this share of samples while its engine serves nothing is polling.
SPIN_SHARE = 0.8
IDLE_NICE = 19


@dataclass
class Placement:
    cores: set[int]
    threads: int = 0
    demoted: list[int] = field(default_factory=list)

    def summary(self) -> str:
        cores = ",".join(map(str, sorted(self.cores)))
        return f"cores {cores}, {self.threads} threads, {len(self.demoted)} pollers demoted"


def parse_cores(spec: str) -> set[int]:
    """`0`, `0-3` or `0,2-3`, as VLLM_CPU_OMP_THREADS_BIND writes a core list."""
    cores: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


def choose_cores(available: Sequence[int], taken: Sequence[str], lone: bool) -> str:
    """Cores for one more engine: all of them for a lone engine, else the least taken one
    (lowest first). `available` is this process's CPU set, not the host's: in a container or
    under taskset, the cores the runner may use."""
    if lone:
        return ",".join(map(str, available))
    return str(min(available, key=lambda c: taken.count(str(c))))


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (engine core and worker processes), parents first."""
    try:
        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return [pid]


def threads(pid: int) -> list[int]:
    try:
        return [t.id for t in psutil.Process(pid).threads()]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []  # the process is gone


def runnable(pid: int, tid: int) -> bool:
    """Running or waiting for a CPU: never true for long of a thread that blocks. (psutil
    has no per-thread state: it is the first field of the thread's stat after its name,
    which may hold spaces and parentheses.)"""
    try:
        stat = (PROC / str(pid) / "task" / str(tid) / "stat").read_text()
    except OSError:
        return False  # exited meanwhile
    return stat.rsplit(")", 1)[-1].split()[:1] == ["R"]


def place(pid: int, cores: set[int], window: float = 1.0, samples: int = 20) -> Placement:
    """Confine every thread under `pid` to `cores`; demote threads that spin while idle.

    Call it when the engine is idle (just after its health check passed). A spinner is
    told apart by its state, sampled across `window` seconds: it is runnable in nearly
    every sample, however loaded the machine, where a waiting thread sleeps. A process's
    main thread is never demoted, since in vLLM's worker it is the one that runs the model.
    """
    result = Placement(cores)
    tids = []
    for proc in process_tree(pid):
        for tid in threads(proc):
            try:
                os.sched_setaffinity(tid, cores)
            except OSError:
                continue  # exited meanwhile, or not ours to move
            tids.append((proc, tid))
    result.threads = len(tids)
    seen = dict.fromkeys(tids, 0)
    for _ in range(samples):
        time.sleep(window / samples)  # sampling thread states, not waiting for readiness
        for key in tids:
            seen[key] += runnable(*key)
    for proc, tid in tids:
        if tid != proc and seen[(proc, tid)] >= SPIN_SHARE * samples:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, IDLE_NICE)  # a TID: that thread alone
            except OSError:
                continue  # exited meanwhile, or not ours to renice
            result.demoted.append(tid)
    return result
