"""Run one experiment with ``flwr run`` on a private, short-lived local SuperLink.

Each run gets its own ``FLWR_HOME`` and free ports, so runs never reuse a SuperLink left
over from another run (a trap measured here), and everything it starts is stopped by PID
when it ends or fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from deploy.procs import free_ports
from deploy.run_config import run_config_flag
from simulations.experiment import Experiment
from simulations.processes import flower_env, running, stop, stop_marked, wait_healthy

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "fedequity"
RUN_STARTED = re.compile(r"Successfully started run (\d+)")
# Ray's root-logger copy of each Flower line starts with a timestamp: show Flower's only.
DUPLICATE = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:")
SHOWN = re.compile(r"round \d+/\d+ acc=|ERROR|Traceback|Exception")


class RunFailed(RuntimeError):
    """The federated run did not complete all its rounds."""


def write_connection(flwr_home: Path, port: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def superlink_command(port: int, control_port: int) -> list[str]:
    return [
        str(Path(sys.executable).parent / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--control-api-address", f"127.0.0.1:{control_port}",
    ]  # fmt: skip


def flwr_run_command(experiment: Experiment, overrides: dict[str, Any]) -> list[str]:
    fed = experiment.federation
    federation = (
        f"num-supernodes={fed['num-supernodes']} client-resources-num-cpus={fed['client-cpus']}"
    )
    return [
        str(Path(sys.executable).parent / "flwr"),
        "run", str(PROJECT_ROOT), CONNECTION,
        "--federation-config", federation,
        *run_config_flag(overrides),
        "--stream",
    ]  # fmt: skip


def _stream(process: subprocess.Popen, log_path: Path, verbose: bool) -> str | None:
    """Copy ``flwr run`` output to the log, show round lines and errors; return the run id."""
    run_id = None
    assert process.stdout is not None
    with log_path.open("a") as log:
        for line in process.stdout:
            log.write(line)
            if (match := RUN_STARTED.search(line)) and run_id is None:
                run_id = match.group(1)
            if verbose or (SHOWN.search(line) and not DUPLICATE.match(line)):
                print(line.rstrip(), flush=True)
    return run_id


def _flwr_run(
    experiment: Experiment, overrides: dict[str, Any], env: dict[str, str], logs: Path,
    verbose: bool,
) -> str | None:  # fmt: skip
    client = subprocess.Popen(
        flwr_run_command(experiment, overrides),
        env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        return _stream(client, logs / "flwr-run.log", verbose)
    finally:
        stop(client)


def _check_complete(run_dir: Path, num_rounds: int, logs: Path) -> None:
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
    write_connection(flwr_home, port)
    marker = uuid.uuid4().hex
    env = flower_env(flwr_home, marker)
    superlink_log = logs / "superlink.log"
    try:
        with running(
            superlink_command(port, control_port), env=env, log_file=superlink_log,
            cwd=PROJECT_ROOT,
        ) as superlink:  # fmt: skip
            wait_healthy(
                f"http://127.0.0.1:{port}/health", superlink, timeout_s=60, log_file=superlink_log
            )
            run_id = _flwr_run(experiment, overrides, env, logs, verbose)
    finally:
        stop_marked(marker)
    if run_id is None:
        raise RunFailed(f"`flwr run` did not start a run; see {logs / 'flwr-run.log'}")
    run_dir = output_dir / run_id
    _check_complete(run_dir, cfg.num_server_rounds, logs)
    shutil.copytree(logs, run_dir / "logs")
    shutil.rmtree(work, ignore_errors=True)
    return run_dir
