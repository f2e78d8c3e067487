"""Talk to a SuperLink the documented way: ``$FLWR_HOME/config.toml`` and the ``flwr`` CLI."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from deploy.procs import Managed, ProcessSupervisor

CLI_TIMEOUT = 60.0
RUN_ID_RE = re.compile(r"Successfully started run (\d+)")
COMPLETED = "finished:completed"


def tool(name: str) -> str:
    """A Flower executable next to this interpreter (the venv), else the bare name."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class FlowerCliError(RuntimeError):
    """A ``flwr`` command or a Flower process failed; the message carries its output."""


def write_connection(flwr_home: Path, name: str, address: str, root_cert: Path) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one TLS connection, the default.

    Flower 1.42 keeps connections here (not in ``pyproject.toml``); the root certificate
    path must be absolute because the CLI resolves it from wherever it runs.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f'default = "{name}"\n\n'
        f"[superlink.{name}]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{root_cert.resolve().as_posix()}"\n',
        encoding="utf-8",
    )
    return path


def wait_healthy(url: str, ca_cert: Path, proc: Managed, timeout: float) -> None:
    """Poll ``GET url`` over TLS (verified against ``ca_cert``) until it answers 200."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise FlowerCliError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise FlowerCliError(
        f"{proc.name} not healthy at {url} after {timeout:.0f} s:\n{proc.log_tail()}"
    )


def _json_out(result: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    start = result.stdout.find("{")
    try:
        data: dict[str, Any] = json.loads(result.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if result.returncode != 0 or not data.get("success"):
        raise FlowerCliError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}".strip()
        )
    return data


def flwr(sup: ProcessSupervisor, cwd: Path, *args: str) -> dict[str, Any]:
    """Run ``flwr <args> --format json`` and return its JSON answer."""
    result = sup.run([tool("flwr"), *args, "--format", "json"], cwd=cwd, timeout=CLI_TIMEOUT)
    return _json_out(result, "flwr " + " ".join(args))


def register(sup: ProcessSupervisor, public_key: Path, conn: str, cwd: Path) -> str:
    """``flwr supernode register KEY.pub CONN``; return the node id."""
    data = flwr(sup, cwd, "supernode", "register", str(public_key), conn)
    return str(data["node-id"])


def wait_online(
    sup: ProcessSupervisor, conn: str, node_ids: list[str], cwd: Path, timeout: float
) -> None:
    """Wait until every registered node reports ``online``; fail if a process died."""
    deadline = time.monotonic() + timeout
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        _raise_if_dead(sup)
        nodes = flwr(sup, cwd, "supernode", "list", conn)["nodes"]
        status = {str(n["node-id"]): str(n["status"]) for n in nodes}
        if all(status.get(i) == "online" for i in node_ids):
            return
        time.sleep(0.5)
    raise FlowerCliError(f"SuperNodes not online after {timeout:.0f} s: {status}")


def _raise_if_dead(sup: ProcessSupervisor) -> None:
    dead = sup.dead()
    if dead:
        proc = dead[0]
        raise FlowerCliError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")


def _pump(stream: IO[str], log: IO[str], found: list[str]) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        if not found and (match := RUN_ID_RE.search(line)):
            found.append(match.group(1))


def run_app(
    sup: ProcessSupervisor,
    app: Path,
    conn: str,
    run_config: list[str],
    cwd: Path,
    timeout: float,
) -> str:
    """``flwr run APP CONN --stream``, echoing its log; return the run id.

    Fails fast when a SuperLink/SuperNode/SuperExec process dies while the run is going.
    """
    cmd = [tool("flwr"), "run", str(app), conn, "--stream", *run_config]
    found: list[str] = []
    log_path = sup.log_dir / "flwr-run.log"
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=sup.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None  # for mypy: stdout=PIPE
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, found), daemon=True)
        pump.start()
        try:
            _wait_run(sup, proc, timeout)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
            pump.join(timeout=5)
    if proc.returncode != 0 or not found:
        raise FlowerCliError(f"`flwr run` exited with {proc.returncode}; see {log_path}")
    return found[0]


def _wait_run(sup: ProcessSupervisor, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        _raise_if_dead(sup)
        if time.monotonic() > deadline:
            raise FlowerCliError(f"run did not finish within {timeout:.0f} s")
        time.sleep(0.5)


def check_completed(
    sup: ProcessSupervisor, conn: str, run_id: str, cwd: Path, timeout: float
) -> None:
    """Raise unless run ``run_id`` is ``finished:completed`` (``flwr run`` exits 0 anyway)."""
    deadline = time.monotonic() + min(timeout, 60.0)
    while True:
        runs = flwr(sup, cwd, "list", "--run-id", run_id, conn)["runs"]
        status = str(runs[0]["status"]) if runs else "unknown"
        if status.startswith("finished") or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if status != COMPLETED:
        details = runs[0].get("status-details", "") if runs else ""
        raise FlowerCliError(f"run {run_id} ended as {status}: {details}")
