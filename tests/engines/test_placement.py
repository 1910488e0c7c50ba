"""Engine placement: every thread of a process tree confined to its cores, pollers demoted."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pdserve.engines import placement
from pdserve.process import wait_tcp
from testkit import Spawn

# A stand-in for a vLLM engine: the main process with a spinning thread (NIXL's progress
# thread) and a waiting one, and a child process (the worker) with a spinner of its own.
# Once all are running it writes their thread ids and listens on a port: that is readiness.
CHILD = """
import sys, threading
def spin():
    out.write(f"{threading.get_native_id()}\\n"); out.flush()
    while True:
        pass
out = sys.stdout
threading.Thread(target=spin, daemon=True).start()
threading.Event().wait()
"""
ENGINE = """
import json, os, socket, subprocess, sys, threading
ids = {"main": [threading.get_native_id()], "spin": [], "wait": []}
def spin():
    while True:
        pass
def wait():
    threading.Event().wait()
for role, fn in (("spin", spin), ("wait", wait)):
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    ids[role].append(t.native_id)
child = subprocess.Popen([sys.executable, "-c", sys.argv[3]], stdout=subprocess.PIPE, text=True)
ids["main"].append(child.pid)
ids["spin"].append(int(child.stdout.readline()))
with open(sys.argv[1], "w") as f:
    json.dump(ids, f)
server = socket.create_server(("127.0.0.1", int(sys.argv[2])))
while True:
    server.accept()[0].close()
"""


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_place_confines_every_thread_and_demotes_only_spinners(
    spawn: Spawn, port, tmp_path: Path
) -> None:
    ids_file, ready = tmp_path / "ids.json", port()
    engine = spawn("engine", [sys.executable, "-c", ENGINE, str(ids_file), str(ready), CHILD])
    wait_tcp("127.0.0.1", ready, 30, engine.check_alive)
    ids = json.loads(ids_file.read_text())
    assert engine.pid is not None
    tree = placement.process_tree(engine.pid)
    assert tree == [engine.pid, ids["main"][1]]

    result = placement.place(engine.pid, {0}, window=1.0)

    every = [t for p in tree for t in placement.threads(p)]
    assert result.threads == len(every)
    assert all(os.sched_getaffinity(t) == {0} for t in every)
    assert sorted(result.demoted) == sorted(ids["spin"])
    assert all(_nice(t) == placement.IDLE_NICE for t in ids["spin"])
    assert all(_nice(t) == 0 for t in ids["main"] + ids["wait"])
    assert result.summary() == f"cores 0, {len(every)} threads, 2 pollers demoted"


def test_parse_cores() -> None:
    assert placement.parse_cores("1") == {1}
    assert placement.parse_cores("0-3") == {0, 1, 2, 3}
    assert placement.parse_cores("0,2-3") == {0, 2, 3}


def test_place_on_a_process_that_is_gone() -> None:
    result = placement.place(2**22 + 1, {0}, window=0.01)  # above pid_max's default
    assert result.threads == 0 and result.demoted == []


def test_choose_cores() -> None:
    assert placement.choose_cores([0, 1], [], lone=True) == "0,1"
    assert placement.choose_cores([2, 3], [], lone=False) == "2"  # a restricted CPU set
    assert placement.choose_cores([0, 1], ["0"], lone=False) == "1"
    assert placement.choose_cores([0, 1], ["0", "1"], lone=False) == "0"
    assert placement.choose_cores([0, 1], ["0", "1", "0"], lone=False) == "1"
