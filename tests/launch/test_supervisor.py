"""launch.supervisor: stopping a run stops detached grandchildren and marked orphans too."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

from launch.net import free_ports
from launch.supervisor import MARKER_ENV, ProcessSupervisor, marked_pids, pid_alive
from launch.watchdog import reap, watch

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
    _wait_for(lambda: "ready" in proc.log_tail())  # SIGTERM is ignored from here on
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
    _wait_for(lambda: "ready" in proc.log_tail())  # SIGTERM is ignored from here on
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


def test_stop_all_stops_the_whole_tree_even_detached_children(tmp_path: Path) -> None:
    # The child starts a grandchild in a new session, as Flower does with its SuperExec.
    script = "import subprocess,time; subprocess.Popen(['sleep','60'], start_new_session=True); time.sleep(60)"
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    try:
        process = sup.start("tree", [sys.executable, "-c", script], cwd=tmp_path).popen
        root = psutil.Process(process.pid)
        deadline = time.monotonic() + 10
        while not root.children(recursive=True) and time.monotonic() < deadline:
            time.sleep(0.01)
        tree = [root, *root.children(recursive=True)]
    finally:
        sup.stop_all()
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == []


def test_stop_all_reaches_marked_orphans(tmp_path: Path) -> None:
    """A SuperLink that died first leaves its detached children (``flwr-simulation``, Ray)
    re-parented to init; they still carry the marker."""
    marker = uuid.uuid4().hex
    orphan = subprocess.Popen(["sleep", "60"], env=dict(os.environ) | {MARKER_ENV: marker},
                              start_new_session=True)  # fmt: skip
    try:
        ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path, marker=marker).stop_all(grace=5)
        # Signalled, so it exits within seconds (unsignalled, `sleep 60` would not): waiting
        # rather than polling at once, which a loaded machine can beat to the signal's
        # delivery; not psutil.pid_exists, which a busy machine can make true again by
        # reusing the pid.
        assert orphan.wait(timeout=5) is not None
    finally:
        orphan.kill()
        orphan.wait()


def test_child_env_carries_the_marker(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env={"A": "1"}, log_dir=tmp_path, marker="abc")
    assert sup.child_env() == {"A": "1", MARKER_ENV: "abc"}


def test_raise_if_dead_names_the_process_and_its_log(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    proc = sup.start("dies", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"], tmp_path)
    proc.popen.wait(timeout=30)
    try:
        sup.raise_if_dead()
    except RuntimeError as error:
        assert "dies exited with 3" in str(error) and "bye" in str(error)
    else:
        raise AssertionError("raise_if_dead did not raise")
    finally:
        sup.stop_all()


# A marked leader whose child shows a blank environment, as Ray's agents do once they
# retitle themselves: the marker cannot be read from the child, only its session tells. The
# child has a process group of its own, as Ray's have, so no group signal reaches it.
BLANKED_CHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
    "                         env={}, process_group=0)\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _blanked_child(sup: ProcessSupervisor, tmp_path: Path) -> int:
    proc = sup.start("leader", [sys.executable, "-c", BLANKED_CHILD], cwd=tmp_path)
    _wait_for(lambda: proc.log_tail().strip().isdigit())
    child = int(proc.log_tail().strip())
    assert child not in marked_pids(sup.marker)  # invisible to the marker alone
    return child


def test_stop_all_reaches_a_child_whose_environment_reads_blank(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    child = _blanked_child(sup, tmp_path)
    sup.stop_all(grace=1.0)
    _wait_for(lambda: not pid_alive(child))
    assert not pid_alive(child)


def test_the_watchdog_reaps_a_child_whose_environment_reads_blank(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    try:
        child = _blanked_child(sup, tmp_path)
        reap(sup.marker, grace=1.0)
        _wait_for(lambda: not pid_alive(child))
        assert not pid_alive(child)
    finally:
        sup.stop_all(grace=1.0)


# An owner in a session of its own (a terminal's), with a marked child in that session (a
# CLI call) and a bystander (the terminal's shell).
OWNER = """
import os, subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
bystander = subprocess.Popen(sleep)
marked = subprocess.Popen(sleep, env={**os.environ, sys.argv[1]: sys.argv[2]})
print(bystander.pid, marked.pid, flush=True)
time.sleep(120)
"""


def test_the_watchdog_spares_the_session_of_the_owner_it_outlived() -> None:
    marker = uuid.uuid4().hex
    owner = subprocess.Popen([sys.executable, "-c", OWNER, MARKER_ENV, marker],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert owner.stdout is not None
    bystander, marked = map(int, owner.stdout.readline().split())
    try:
        watcher = threading.Thread(target=watch, args=(owner.pid, marker))
        watcher.start()
        time.sleep(1.0)  # the watchdog has read whose session it spares
        owner.kill()  # SIGKILL: no clean-up of its own
        owner.wait()
        watcher.join(timeout=30)
        _wait_for(lambda: not pid_alive(marked))
        assert not pid_alive(marked)
        assert pid_alive(bystander)
    finally:
        for pid in (bystander, marked):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
