"""``python -m launch.watchdog OWNER_PID MARKER``: stop a run's processes when its owner dies.

A supervisor stops what it started when it exits, but a SIGKILL'd owner runs no clean-up,
and Flower's processes (SuperLink, the simulation, Ray's raylet, workers and actors) run
in sessions of their own, so nothing would reach them: the federation would go on
headless. Flower's ``--parent-pid`` covers only some of them. So every supervisor starts
this watchdog, outside the run's marker and in its own session: once the owner is gone,
it stops every process carrying the marker (SIGTERM, then SIGKILL) and exits.
"""

from __future__ import annotations

import signal
import sys
import time

from launch.supervisor import (
    pid_alive,
    run_pids,
    run_sessions,
    session_of,
    signal_pid,
    start_time,
)

POLL_S = 0.5
GRACE_S = 5.0


def reap(marker: str, grace: float = GRACE_S, spare: int | None = None) -> list[int]:
    """Stop every live process carrying ``marker`` (or in a session of one, but ``spare``);
    return those that needed SIGKILL."""
    sessions = run_sessions(marker, spare)
    for pid in run_pids(marker, sessions):
        signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and run_pids(marker, sessions):
        time.sleep(0.1)
    survivors = run_pids(marker, sessions)
    for pid in survivors:
        signal_pid(pid, signal.SIGKILL)
    return survivors


def watch(owner: int, marker: str) -> None:
    """Wait for ``owner`` to die, then reap the marked processes. The owner's session is
    the user's (a terminal, a CI job): a marked process in it marks none of the rest."""
    started, session = start_time(owner), session_of(owner)
    while pid_alive(owner) and start_time(owner) == started:
        time.sleep(POLL_S)
    reap(marker, spare=session)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal is the owner's
    watch(int(sys.argv[1]), sys.argv[2])
