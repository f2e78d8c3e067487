"""deploy.procs: stopping a deployment stops detached grandchildren too."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from deploy.procs import ProcessSupervisor, free_ports, marked_pids

# A parent that detaches a child into a new session (as SuperLink/SuperNode do with their
# SuperExec), then ignores SIGTERM so that only SIGKILL ends it.
PARENT = """
import signal, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_stop_all_kills_detached_descendants_and_stubborn_parents(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    proc = sup.start("parent", [sys.executable, "-c", PARENT], cwd=tmp_path)
    _wait_for(lambda: len(marked_pids(sup.marker)) == 2)
    pids = marked_pids(sup.marker)
    assert len(pids) == 2 and proc.popen.pid in pids
    killed = sup.stop_all(grace=1.0)
    assert proc.popen.pid in killed  # ignored SIGTERM, needed SIGKILL
    _wait_for(lambda: not marked_pids(sup.marker))
    assert marked_pids(sup.marker) == []
    assert "ready" in proc.log_tail()


def test_marker_does_not_match_other_supervisors(tmp_path: Path) -> None:
    a = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path / "a")
    b = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path / "b")
    proc = a.start("sleep", [sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path)
    try:
        _wait_for(lambda: marked_pids(a.marker) == [proc.popen.pid])
        assert marked_pids(b.marker) == []
    finally:
        assert a.stop_all(grace=5.0) == []  # SIGTERM was enough
    assert proc.popen.returncode is not None


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 < p < 65536 for p in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_second_sigterm_during_stop_all_does_not_cut_the_clean_up_short(tmp_path: Path) -> None:
    """stop_all waits out a grace period for a parent that ignores SIGTERM; a second
    SIGTERM to us meanwhile must not leave it running."""
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    proc = sup.start("parent", [sys.executable, "-c", PARENT], cwd=tmp_path)
    _wait_for(lambda: len(marked_pids(sup.marker)) == 2)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))

    def interrupted(*_: object) -> None:
        raise RuntimeError("second SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        timer.start()
        killed = sup.stop_all(grace=1.0)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
        left = marked_pids(sup.marker)
        sup.stop_all(grace=0.1)  # whatever happened above, leave nothing running
    assert left == []
    assert proc.popen.pid in killed
    _wait_for(lambda: not marked_pids(sup.marker))
    assert marked_pids(sup.marker) == []
