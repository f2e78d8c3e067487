"""Start and stop Flower processes by PID, in their own process groups, also on failure."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from deploy.procs import MARKER_ENV, marked_pids

OFFLINE_ENV = {
    # Without this, `flwr run` makes the SuperLink `uv sync` the app: a 5 GB CUDA torch.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
}


def flower_env(flwr_home: Path, marker: str) -> dict[str, str]:
    """The environment for Flower processes: project-local FLWR_HOME, offline, no telemetry.

    ``marker`` tags every process of the run (children inherit it) for :func:`stop_marked`.
    """
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env[MARKER_ENV] = marker
    env["FLWR_HOME"] = str(flwr_home)
    # Flower starts its helpers (flower-superexec, flwr-serverapp) by name, from PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if os.environ.get("FEDEQUITY_ONLINE") == "1":  # the user named a hub model/dataset
        env.pop("HF_HUB_OFFLINE")
        env.pop("HF_DATASETS_OFFLINE")
    return env


def start(
    command: Sequence[str], *, env: dict[str, str], log_file: Path, cwd: Path
) -> subprocess.Popen:
    """Start ``command`` in a new session so that stopping it stops all its children."""
    handle = log_file.open("ab")
    return subprocess.Popen(
        list(command),
        env=env,
        cwd=cwd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _terminate(procs: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM ``procs``, wait up to ``grace_s``, SIGKILL whatever is left."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def stop(process: subprocess.Popen, *, grace_s: float = 10.0) -> None:
    """Stop ``process`` and every descendant: SIGTERM, wait ``grace_s``, then SIGKILL.

    Descendants are collected first because Flower detaches some children into their own
    sessions (SuperExec, Ray), out of reach of a process-group signal.
    """
    try:
        root = psutil.Process(process.pid)
        _terminate([root, *root.children(recursive=True)], grace_s)
    except psutil.NoSuchProcess:
        pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def stop_marked(marker: str, *, grace_s: float = 10.0) -> None:
    """Stop every process carrying ``marker`` in its environment, orphans included.

    A SuperLink that died first leaves its detached children (``flwr-simulation``, Ray)
    re-parented to init, out of reach of :func:`stop`; they still carry the marker.
    """
    procs = []
    for pid in marked_pids(marker):
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _terminate(procs, grace_s)


def wait_healthy(url: str, process: subprocess.Popen, *, timeout_s: float, log_file: Path) -> None:
    """Poll ``url`` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}; see {log_file}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not become healthy in {timeout_s:.0f}s; see {log_file}")


@contextlib.contextmanager
def running(
    command: Sequence[str], *, env: dict[str, str], log_file: Path, cwd: Path
) -> Iterator[subprocess.Popen]:
    """A process that is stopped (with its whole group) when the block exits, however."""
    process = start(command, env=env, log_file=log_file, cwd=cwd)
    try:
        yield process
    finally:
        stop(process)
