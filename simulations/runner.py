"""Run one experiment with ``flwr run`` on a private, short-lived local SuperLink.

Each run gets its own ``FLWR_HOME`` and free ports, so runs never reuse a SuperLink left
over from another run (a trap measured here), and everything it starts is stopped by PID
when it ends or fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.run_config import run_config_flag
from launch.app_files import stage_app
from launch.connection import write_connection
from launch.env import simulation_env, tool
from launch.net import free_ports, wait_healthy
from launch.stream import LOG_NAME, parse_run_id, stream_run
from launch.supervisor import ProcessSupervisor, pid_alive, start_time
from launch.watchdog import reap
from server.handshake import GATE_ENV, open_gate, says_complete
from server.records import (
    mark_status,
    mark_stopped,
    results_version,
    rounds_without_survivors,
)
from simulations.experiment import Experiment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "fedequity"
# Ray's root-logger copy of each Flower line starts with a timestamp: show Flower's only.
DUPLICATE = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:")
# A bare "Traceback" line says nothing: a failure's cause is printed once, at the end.
SHOWN = re.compile(r"round \d+/\d+ acc=|ERROR")


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


def flwr_run_command(
    experiment: Experiment, overrides: dict[str, Any], app: Path = PROJECT_ROOT
) -> list[str]:
    """``flwr run`` of this app (from ``app``, its staged copy) on the private SuperLink
    with the experiment's federation."""
    fed = experiment.federation
    federation = (
        f"num-supernodes={fed['num-supernodes']} client-resources-num-cpus={fed['client-cpus']}"
    )
    return [
        tool("flwr"),
        "run", str(app), CONNECTION,
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
    payload = json.loads(results.read_text())
    rounds = payload["rounds"]
    if len(rounds) < num_rounds:
        raise RunFailed(f"only {len(rounds)}/{num_rounds} rounds completed; see the logs in {logs}")
    if empty := rounds_without_survivors(rounds, payload.get("config", {})):
        raise RunFailed(
            f"round(s) {empty} ended without an aggregate (failed or rejected clients); see the "
            f"logs in {logs}"
        )
    if payload.get("status") != "complete":  # the last checkpoint was not saved
        raise RunFailed(
            f"all {num_rounds} rounds ran, but the run ended {payload.get('status')!r} before "
            f"saving its last checkpoint; see the logs in {logs}"
        )


def run_experiment(
    experiment: Experiment,
    *,
    verbose: bool = False,
    validate: Callable[[], None] | None = None,
) -> Path:
    """Run ``experiment`` to completion and return its run directory.

    ``validate`` (the experiment's slow checks: model, data, budgets) runs while the
    SuperLink and the simulation start; the ServerApp waits at the start gate
    (:mod:`server.handshake`) until it passes, so nothing trains or is written before. If
    it raises, every process is stopped, the work directory removed, and its error raised.

    A run that fails or is interrupted is marked so in its ``results.json`` (``status``),
    keeps its logs under ``<run-dir>/logs`` and can be continued with ``--resume``;
    ``<output-dir>/latest`` moves only to complete runs.
    """
    cfg = experiment.run_config
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    created = [p for p in (output_dir, *output_dir.parents) if not p.exists()]  # deepest first
    output_dir.mkdir(parents=True, exist_ok=True)
    overrides = experiment.overrides | {"output-dir": str(output_dir)}
    reap_abandoned(output_dir)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=output_dir))
    flwr_home, logs, gate = work / "flwr-home", work / "logs", work / "start-gate"
    logs.mkdir(parents=True)
    port, control_port = free_ports(2)  # bound together, so never the same port twice
    write_connection(flwr_home, CONNECTION, f"127.0.0.1:{port}")
    env = simulation_env(flwr_home) | {GATE_ENV: str(gate)}
    sup = ProcessSupervisor(env=env, log_dir=logs)
    found: list[str] = []
    run_dir: Path | None = Path(cfg.resume_from) if cfg.resume_from else None
    before = results_version(run_dir) if run_dir is not None else None
    # a resumed run's directory keeps its first id, not the one `flwr run` logs: record it
    owner = {"pid": os.getpid(), "started": start_time(os.getpid()), "marker": sup.marker,
             "run_dir": str(run_dir or "")}  # fmt: skip
    (work / OWNER).write_text(json.dumps(owner))
    try:
        streamed = None
        try:
            superlink = sup.start("superlink", superlink_command(port, control_port), PROJECT_ROOT)
            app = stage_app(PROJECT_ROOT, work / "app")  # while the SuperLink starts
            validated = in_background(validate or (lambda: None))
            wait_healthy(f"http://127.0.0.1:{port}/health", superlink, timeout=60)
            command = flwr_run_command(experiment, overrides, app)
            streamed = stream_run(
                sup, command, PROJECT_ROOT, show=shown(verbose), found=found,
                finished=says_complete, started=lambda: _pass_gate(gate, validated),
            )  # fmt: skip
        finally:
            # A complete run has nothing left to write: no grace for Flower's goodbye.
            sup.stop_all(grace=FINISHED_GRACE_S if streamed and streamed.finished else 8.0)
        run_dir = run_dir or (output_dir / found[0] if found else None)
        if run_dir is None:
            raise RunFailed(f"`flwr run` did not start a run; see {logs}")
        check_complete(run_dir, cfg.num_server_rounds, logs)
    except InvalidExperiment as invalid:  # nothing was written: leave nothing behind
        shutil.rmtree(work, ignore_errors=True)
        for made in created:  # the output directories this run made, if still empty
            with contextlib.suppress(OSError):
                made.rmdir()
        raise invalid.error from None
    except BaseException as error:  # Ctrl-C and SIGTERM included: mark the run, keep logs
        run_dir = run_dir or (output_dir / found[0] if found else None)
        why = cause(logs) if isinstance(error, RunFailed) else ""
        if run_dir is not None and run_dir.is_dir():
            mark_stopped(run_dir, error, unless_unchanged=before)
            _keep_logs(work, logs, run_dir)
        if why:
            raise RunFailed(f"{error}{why}") from None
        raise
    _keep_logs(work, logs, run_dir)
    return run_dir


# Seconds a finished run's processes get to exit on SIGTERM before SIGKILL: its results,
# checkpoint and ledgers are written (each atomically), so nothing is lost by a SIGKILL.
FINISHED_GRACE_S = 0.2


class InvalidExperiment(Exception):
    """``validate`` refused the experiment (its error is ``error``)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _pass_gate(gate: Path, validated: Callable[[], None]) -> None:
    """Wait for the validation; open the start gate, or close it and raise."""
    try:
        validated()
    except (ValueError, FileNotFoundError) as error:
        open_gate(gate, go=False)
        raise InvalidExperiment(error) from error
    open_gate(gate, go=True)


def in_background(work: Callable[[], None]) -> Callable[[], None]:
    """Start ``work`` in a daemon thread; the returned call waits for it and re-raises
    what it raised (a daemon thread: a Ctrl-C meanwhile need not wait for it)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    thread = threading.Thread(target=target, name="validate", daemon=True)
    thread.start()

    def join() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return join


WORK_PREFIX, OWNER = "fedequity-", "owner.json"


def reap_abandoned(output_dir: Path) -> None:
    """Clean up after runners that were killed (kill -9 runs no clean-up): stop any process
    still carrying their marker, move their logs into their run directory, drop the rest.

    A work dir whose run never got an id keeps only its logs (``logs/``, for the failure
    they may explain); one without an owner file, older than an hour, was left by a runner
    stopped before it wrote one (a runner writes it at once).
    """
    for work in output_dir.glob(f"{WORK_PREFIX}*"):
        try:
            owner = json.loads((work / OWNER).read_text())
        except (OSError, ValueError):  # not ours, or its runner is still writing it
            if work.is_dir() and time.time() - work.stat().st_mtime > ORPHAN_AGE_S:
                _drop_all_but_logs(work)
            continue
        pid = int(owner["pid"])
        if pid_alive(pid) and owner.get("started", start_time(pid)) == start_time(pid):
            continue  # alive, and not another process that took a dead runner's PID
        reap(str(owner["marker"]))
        run_dir = _run_dir_of(work, owner, output_dir)
        if run_dir is not None and run_dir.is_dir():
            _mark_interrupted(run_dir)
            _keep_logs(work, work / "logs", run_dir)
        else:
            _drop_all_but_logs(work)


def _run_dir_of(work: Path, owner: dict[str, Any], output_dir: Path) -> Path | None:
    """The run directory of a killed runner's work dir: the resumed one its owner file
    names, else the one of the run id its log shows, if any."""
    if owner.get("run_dir"):
        return Path(owner["run_dir"])
    run_id = next(filter(None, map(parse_run_id, _lines(work / "logs" / LOG_NAME))), None)
    return None if run_id is None else output_dir / run_id


ORPHAN_AGE_S = 3600.0


def _mark_interrupted(run_dir: Path) -> None:
    """A killed runner's run that still says "running", or was killed before its first
    round wrote results, was interrupted (a complete or failed one stays as it is)."""
    results = run_dir / "results.json"
    with contextlib.suppress(OSError, ValueError):
        if not results.exists() or json.loads(results.read_text()).get("status") == "running":
            mark_status(run_dir, "interrupted")


def _drop_all_but_logs(work: Path) -> None:
    """Everything of a dead work dir but its logs (no logs: the dir itself)."""
    for entry in work.iterdir():
        if entry.is_dir() and entry.name != "logs":
            shutil.rmtree(entry, ignore_errors=True)
        elif not entry.is_dir():
            entry.unlink(missing_ok=True)
    if not any(work.iterdir()):
        work.rmdir()


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.is_file() else []


def _keep_logs(work: Path, logs: Path, run_dir: Path) -> None:
    """The run's logs into its directory (``logs``; a resumed part's ``logs-2``, ...); the
    work dir (Flower's home, ~1 MB) goes."""
    target, part = run_dir / "logs", 1
    while target.exists():
        part += 1
        target = run_dir / f"logs-{part}"
    shutil.copytree(logs, target)
    shutil.rmtree(work, ignore_errors=True)


EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception|Exit)|Exception \w+ occurred)\b.*")


def cause(logs: Path | None) -> str:
    """``: <the last exception line>`` of the run's logs, or "" (the console only shows
    round lines; the reason a run failed is otherwise buried in flwr-run.log)."""
    if logs is None or not (log := logs / "flwr-run.log").is_file():
        return ""
    lines = [m.group(0).strip() for m in map(EXCEPTION_LINE.match, log.read_text(
        errors="replace").splitlines()) if m]  # fmt: skip
    return f" (cause: {lines[-1][:400]})" if lines else ""
