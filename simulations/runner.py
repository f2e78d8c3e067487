"""Run one experiment with ``flwr run`` on a private, short-lived local SuperLink.

Each run gets its own ``FLWR_HOME`` and free ports, so runs never reuse a SuperLink left
over from another run (a trap measured here), and everything it starts is stopped by PID
when it ends or fails.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.run_config import run_config_flag
from launch.connection import write_connection
from launch.env import simulation_env, tool
from launch.net import free_ports, wait_healthy
from launch.stream import stream_run
from launch.supervisor import ProcessSupervisor
from simulations.experiment import Experiment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "fedequity"
# Ray's root-logger copy of each Flower line starts with a timestamp: show Flower's only.
DUPLICATE = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:")
SHOWN = re.compile(r"round \d+/\d+ acc=|ERROR|Traceback|Exception")


class RunFailed(RuntimeError):
    """The federated run did not complete all its rounds."""


def superlink_command(port: int, control_port: int) -> list[str]:
    """A private, insecure simulation SuperLink on loopback."""
    return [
        tool("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--control-api-address", f"127.0.0.1:{control_port}",
    ]  # fmt: skip


def flwr_run_command(experiment: Experiment, overrides: dict[str, Any]) -> list[str]:
    """``flwr run`` of this app on the private SuperLink with the experiment's federation."""
    fed = experiment.federation
    federation = (
        f"num-supernodes={fed['num-supernodes']} client-resources-num-cpus={fed['client-cpus']}"
    )
    return [
        tool("flwr"),
        "run", str(PROJECT_ROOT), CONNECTION,
        "--federation-config", federation,
        *run_config_flag(overrides),
        "--stream",
    ]  # fmt: skip


def shown(verbose: bool) -> Callable[[str], bool]:
    """Which ``flwr run`` lines to echo: all if ``verbose``, else round lines and errors."""
    return lambda line: verbose or bool(SHOWN.search(line) and not DUPLICATE.match(line))


def check_complete(run_dir: Path, num_rounds: int, logs: Path) -> None:
    """Raise :class:`RunFailed` unless ``run_dir`` holds every round with a client in it."""
    results = run_dir / "results.json"
    if not results.is_file():
        raise RunFailed(f"the run wrote no {results}; see the logs in {logs}")
    rounds = json.loads(results.read_text())["rounds"]
    if len(rounds) < num_rounds:
        raise RunFailed(f"only {len(rounds)}/{num_rounds} rounds completed; see the logs in {logs}")
    empty = [r["round"] for r in rounds if r["num_clients"] == 0 and r["failures"] > 0]
    if empty:
        raise RunFailed(f"every client failed in round(s) {empty}; see the logs in {logs}")


def run_experiment(experiment: Experiment, *, verbose: bool = False) -> Path:
    """Run ``experiment`` to completion and return its run directory."""
    cfg = experiment.run_config
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    overrides = experiment.overrides | {"output-dir": str(output_dir)}
    work = Path(tempfile.mkdtemp(prefix="fedequity-", dir=output_dir))
    flwr_home, logs = work / "flwr-home", work / "logs"
    logs.mkdir(parents=True)
    port, control_port = free_ports(2)  # bound together, so never the same port twice
    write_connection(flwr_home, CONNECTION, f"127.0.0.1:{port}")
    sup = ProcessSupervisor(env=simulation_env(flwr_home), log_dir=logs)
    try:
        superlink = sup.start("superlink", superlink_command(port, control_port), PROJECT_ROOT)
        wait_healthy(f"http://127.0.0.1:{port}/health", superlink, timeout=60)
        command = flwr_run_command(experiment, overrides)
        run_id = stream_run(sup, command, PROJECT_ROOT, show=shown(verbose)).run_id
    finally:
        sup.stop_all()
    if run_id is None:
        raise RunFailed(f"`flwr run` did not start a run; see {logs / 'flwr-run.log'}")
    run_dir = output_dir / run_id
    check_complete(run_dir, cfg.num_server_rounds, logs)
    shutil.copytree(logs, run_dir / "logs")
    shutil.rmtree(work, ignore_errors=True)
    return run_dir
