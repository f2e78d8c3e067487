"""``flwr run ... --stream``: its log copied and echoed, its run id parsed, watched."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from launch.app_files import stage_app
from launch.env import tool
from launch.supervisor import FlowerError, ProcessSupervisor, stop_popen

RUN_STARTED = re.compile(r"Successfully started run (\d+)")
LOG_NAME = "flwr-run.log"


def parse_run_id(line: str) -> str | None:
    """The run id in ``flwr run``'s "Successfully started run N" line, else None."""
    match = RUN_STARTED.search(line)
    return match.group(1) if match else None


@dataclass
class Streamed:
    """How a streamed ``flwr run`` ended (``finished``: cut short by a ``finished`` line)."""

    returncode: int | None
    run_id: str | None
    log_path: Path
    finished: bool = False


@dataclass
class _Watch:
    """What the pump thread looks for in each line, and what it found."""

    show: Callable[[str], bool]
    finished: Callable[[str], bool]
    found: list[str]
    done: threading.Event = field(default_factory=threading.Event)


def _pump(stream: IO[str], log: IO[str], watch: _Watch) -> None:
    """Copy every line to ``log``, echo those ``show`` keeps, remember the first run id,
    and raise ``done`` at the first ``finished`` line."""
    for line in stream:
        log.write(line)
        if watch.show(line):
            sys.stdout.write(line)
            sys.stdout.flush()
        if not watch.found and (run_id := parse_run_id(line)):
            watch.found.append(run_id)
        if watch.finished(line):
            watch.done.set()


def _wait(
    sup: ProcessSupervisor,
    proc: subprocess.Popen[str],
    timeout: float | None,
    done: threading.Event,
) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None and not done.is_set():
        sup.raise_if_dead()
        if deadline is not None and time.monotonic() > deadline:
            raise FlowerError(f"run did not finish within {timeout:.0f} s")
        done.wait(0.5)


def stream_run(
    sup: ProcessSupervisor,
    cmd: Sequence[str],
    cwd: Path,
    *,
    timeout: float | None = None,
    show: Callable[[str], bool] = lambda _line: True,
    found: list[str] | None = None,
    finished: Callable[[str], bool] = lambda _line: False,
    started: Callable[[], None] = lambda: None,
) -> Streamed:
    """Run ``cmd`` (a ``flwr run ... --stream``) to its end, logged to
    ``<log_dir>/flwr-run.log``; fail fast if a supervised process dies meanwhile.
    ``found`` (the caller's list) gets the run id as soon as Flower prints it, so that a
    caller interrupted meanwhile still knows which run it was. A line for which
    ``finished`` is true ends the wait there: the caller needs nothing more from the run.
    ``started`` is called once ``cmd`` runs; what it raises stops ``cmd``."""
    sup.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = sup.log_dir / LOG_NAME
    watch = _Watch(show, finished, [] if found is None else found)
    with log_path.open("w", encoding="utf-8", buffering=1) as log:  # lines survive a kill -9
        proc = subprocess.Popen(
            [*sup.cli_prefix, *cmd],
            cwd=cwd,
            env=sup.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None  # for mypy: stdout=PIPE
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, watch), daemon=True)
        pump.start()
        try:
            started()
            _wait(sup, proc, timeout, watch.done)
            returncode = proc.poll()  # None if cut short by a `finished` line
        finally:
            stop_popen(proc, grace=10.0)
            pump.join(timeout=5)
    run_id = watch.found[0] if watch.found else None
    return Streamed(returncode, run_id, log_path, finished=watch.done.is_set())


def run_app(
    sup: ProcessSupervisor,
    app: Path,
    conn: str,
    run_config: list[str],
    cwd: Path,
    timeout: float,
) -> str:
    """``flwr run APP CONN --stream`` (of APP staged under ``cwd``), echoing its log;
    return the run id.

    Fails fast when a SuperLink/SuperNode/SuperExec process dies while the run is going.
    """
    staged = stage_app(app, Path(tempfile.mkdtemp(prefix="app-", dir=cwd)))
    cmd = [tool("flwr"), "run", str(staged), conn, "--stream", *run_config]
    streamed = stream_run(sup, cmd, cwd, timeout=timeout)
    if streamed.returncode != 0 or streamed.run_id is None:
        raise FlowerError(f"`flwr run` exited with {streamed.returncode}; see {streamed.log_path}")
    return streamed.run_id
