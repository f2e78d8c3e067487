"""Start long-running processes and stop every one of them, by PID, whatever happens.

Flower's SuperLink and SuperNode start their SuperExec in a *new session*
(``start_new_session=True``), which then starts ``flwr-serverapp``/``flwr-clientapp``; a
simulation SuperLink detaches ``flwr-simulation`` and Ray the same way. Killing the process
groups we created therefore misses them. Every process started here carries a unique marker
in its environment (``FEDEQUITY_DEPLOY_ID``), inherited by all of its descendants, so
:meth:`ProcessSupervisor.stop_all` can find and stop each one by PID, orphans included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from launch.signals import signals_ignored

MARKER_ENV = "FEDEQUITY_DEPLOY_ID"
PROC = Path("/proc")
KILLED_EXIT_S = 5.0


class FlowerError(RuntimeError):
    """A Flower process or ``flwr`` command failed; the message carries its output."""


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused PID from its first owner)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def marked_pids(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries ``MARKER_ENV=marker``."""
    return run_pids(marker, set())


def _carries(pid: int, needle: bytes) -> bool:
    try:
        return needle in (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def session_of(pid: int) -> int | None:
    """The session id of ``pid``, or None if it is gone."""
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def run_sessions(marker: str, spare: int | None = None) -> set[int]:
    """The sessions that hold a process carrying ``marker``, this process's own and
    ``spare`` (the owner's, for its watchdog: the user's terminal) excepted.

    Ray's agents retitle themselves, which overwrites what ``/proc/PID/environ`` shows with
    blanks: the marker can no longer be read there, and once their raylet is killed they
    linger for minutes. The session they inherited from a marked process still says whose
    they are.
    """
    spared = {os.getsid(0), spare}
    sessions = {session_of(pid) for pid in marked_pids(marker)}
    return {sid for sid in sessions if sid is not None and sid > 1 and sid not in spared}


def run_pids(marker: str, sessions: set[int]) -> list[int]:
    """:func:`marked_pids`, plus the live processes of ``sessions`` (:func:`run_sessions`),
    in one pass over ``/proc``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = (int(e.name) for e in PROC.iterdir() if e.name.isdigit() and int(e.name) != os.getpid())
    return sorted(
        pid for pid in pids
        if (session_of(pid) in sessions or _carries(pid, needle)) and pid_alive(pid)
    )  # fmt: skip


def signal_pid(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid`` (negative: a process group); gone or foreign is fine."""
    with suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_popen(popen: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM ``popen``'s process group, SIGKILL it after ``grace`` seconds, reap it."""
    if popen.poll() is None:
        signal_pid(-popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_pid(-popen.pid, signal.SIGKILL)
            popen.wait(timeout=5)


@dataclass
class Managed:
    """A process started by the supervisor."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 20) -> str:
        """Last ``lines`` lines of the process log."""
        if not self.log_file.closed:
            self.log_file.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def exited(self) -> FlowerError:
        """The error for this process having exited, with its log tail."""
        return FlowerError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")


@dataclass
class ProcessSupervisor:
    """Owns every process of one run or deployment; ``stop_all`` leaves none behind."""

    env: Mapping[str, str]
    log_dir: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: list[Managed] = field(default_factory=list)
    watchdog: subprocess.Popen[bytes] | None = None
    #: what the ``flwr`` CLI calls run under (``ip netns exec <ns>``: the SuperLink's host)
    cli_prefix: tuple[str, ...] = ()

    def child_env(self) -> dict[str, str]:
        """Environment for children: ``env`` plus the marker."""
        return {**self.env, MARKER_ENV: self.marker}

    def start(
        self, name: str, cmd: Sequence[str], cwd: Path, extra_env: Mapping[str, str] | None = None
    ) -> Managed:
        """Start ``cmd`` in its own session, output to ``<log_dir>/<name>.log``; the first
        start also starts the watchdog that stops everything if this process is killed."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.watchdog is None:
            self.watchdog = self._start_watchdog()
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env={**self.child_env(), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        managed = Managed(name, popen, log_path, log_file)
        self.procs.append(managed)
        return managed

    def _start_watchdog(self) -> subprocess.Popen[bytes]:
        """``launch.watchdog`` on this process, without the marker (it must outlive the
        processes it stops) and in its own session (a group kill of ours spares it)."""
        env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
        return subprocess.Popen(
            [sys.executable, "-m", "launch.watchdog", str(os.getpid()), self.marker],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def run(
        self, cmd: Sequence[str], cwd: Path, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command (a ``flwr`` CLI call) to completion, output captured; in a
        session of its own, like every marked process (the owner's session is no run's)."""
        return subprocess.run(
            [*self.cli_prefix, *cmd],
            cwd=cwd,
            env=self.child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def dead(self) -> list[Managed]:
        """Started processes that have exited."""
        return [p for p in self.procs if p.popen.poll() is not None]

    def raise_if_dead(self) -> None:
        """Raise :class:`FlowerError` (with its log tail) if a started process exited."""
        if dead := self.dead():
            raise dead[0].exited()

    def stop_all(self, grace: float = 8.0) -> list[int]:
        """SIGTERM everything we started (and its descendants), then SIGKILL what is left.

        A second Ctrl-C or SIGTERM meanwhile is ignored, or it would cut the clean-up short
        before the SIGKILL. Returns the PIDs that needed SIGKILL (normally none).
        """
        with signals_ignored():
            return self._stop_all(grace)

    def _stop_all(self, grace: float) -> list[int]:
        sessions = run_sessions(self.marker)  # while their marked leaders still live

        def left() -> list[int]:
            return run_pids(self.marker, sessions)

        for proc in reversed(self.procs):  # SuperNodes first, SuperLink last
            if proc.popen.poll() is None:
                signal_pid(-proc.popen.pid, signal.SIGTERM)  # its process group
        for pid in left():
            signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self._live_roots() or left()):
            time.sleep(0.1)
        killed = [*self._live_roots(), *left()]
        for pid in self._live_roots():
            signal_pid(-pid, signal.SIGKILL)
        for pid in killed:
            signal_pid(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILLED_EXIT_S  # SIGKILL is not instant: wait it out
        while killed and time.monotonic() < deadline and left():
            time.sleep(0.05)
        for proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            proc.log_file.close()
        if self.watchdog is not None:  # nothing left for it to guard
            stop_popen(self.watchdog, grace=2.0)
            self.watchdog = None
        return sorted(set(killed))

    def _live_roots(self) -> list[int]:
        return [p.popen.pid for p in self.procs if p.popen.poll() is None]
