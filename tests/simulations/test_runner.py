"""The runner's reading of a run: the cause of a failure, and what counts as complete."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from launch.stream import LOG_NAME
from simulations.runner import (
    ORPHAN_AGE_S,
    OWNER,
    WORK_PREFIX,
    RunFailed,
    cause,
    check_complete,
    reap_abandoned,
    shown,
)

RAY_LOG = """\
INFO :      [ROUND 1/2]
ERROR :     ClientApp raised an exception
Traceback (most recent call last):
  File "/work/clients/app.py", line 58, in train
    raise faults.InjectedCrash(f"injected crash (faults.crash-rate) in round {server_round}")
clients.faults.InjectedCrash: injected crash (faults.crash-rate) in round 1
Traceback (most recent call last):
  File "/work/server/app.py", line 30, in main
ValueError: resume-from /tmp/x: the run had 3 nodes, this federation has 4
"""


def test_the_cause_is_the_last_exception_line_of_the_log(tmp_path: Path) -> None:
    (tmp_path / "flwr-run.log").write_text(RAY_LOG)
    assert cause(tmp_path) == (" (cause: ValueError: resume-from /tmp/x: the run had 3 nodes, "
                               "this federation has 4)")  # fmt: skip
    assert cause(tmp_path / "absent") == ""


def test_the_console_shows_round_lines_and_errors_not_bare_tracebacks() -> None:
    show = shown(verbose=False)
    assert show("INFO :      round 1/8 acc=0.5 bal_acc=0.5")
    assert show("ERROR :     ClientApp raised an exception")
    assert not show("Traceback (most recent call last):")
    assert shown(verbose=True)("Traceback (most recent call last):")


def write_results(
    run_dir: Path, rounds: list[dict], config: dict | None = None, status: str = "complete"
) -> None:
    run_dir.mkdir(exist_ok=True)
    results = {"config": config or {}, "rounds": rounds, "status": status}
    (run_dir / "results.json").write_text(json.dumps(results))


def test_a_run_whose_last_checkpoint_was_not_saved_is_not_complete(tmp_path: Path) -> None:
    write_results(tmp_path, [{"round": 1, "num_clients": 3, "failures": 0}], status="running")
    with pytest.raises(RunFailed, match="ended 'running' before saving its last checkpoint"):
        check_complete(tmp_path, 1, tmp_path)


def test_a_round_without_survivors_fails_a_run_unless_faults_were_asked_for(
    tmp_path: Path,
) -> None:
    rounds = [{"round": 1, "num_clients": 3, "failures": 0},
              {"round": 2, "num_clients": 0, "failures": 3}]  # fmt: skip
    write_results(tmp_path, rounds)
    with pytest.raises(RunFailed, match=r"round\(s\) \[2\] ended without an aggregate"):
        check_complete(tmp_path, 2, tmp_path)
    write_results(tmp_path, rounds, {"faults.crash-rate": 0.6})
    check_complete(tmp_path, 2, tmp_path)  # injected: a result, reported per round
    lost = {"round": 2, "num_clients": 0, "failures": 1, "skipped": "an error reply: ..."}
    write_results(tmp_path, [rounds[0], lost])
    check_complete(tmp_path, 2, tmp_path)  # survivors, but the round was not aggregated
    write_results(tmp_path, [{**lost, "round": 1}, lost])
    with pytest.raises(RunFailed, match=r"round\(s\) \[1, 2\]"):
        check_complete(tmp_path, 2, tmp_path)  # no round ever aggregated: nothing trained
    rejected = {"num_clients": 0, "failures": 0, "rejected": {"1": "non-finite values"}}
    write_results(tmp_path, [{**rejected, "round": 1}, {**rejected, "round": 2}])
    with pytest.raises(RunFailed, match=r"round\(s\) \[1, 2\]"):
        check_complete(tmp_path, 2, tmp_path)  # every reply rejected, none failed
    with pytest.raises(RunFailed, match="only 2/3 rounds"):
        check_complete(tmp_path, 3, tmp_path)


def test_dead_work_dirs_keep_only_their_logs(tmp_path: Path) -> None:
    """A killed runner's work dir with no run id, and one whose runner died before writing
    its owner file (once an hour old), keep their logs and nothing else; a fresh one
    without an owner file may be a runner still starting: untouched."""

    def work_dir(name: str, owner: bool) -> Path:
        work = tmp_path / f"{WORK_PREFIX}{name}"
        for part in ("app", "flwr-home", "logs"):
            (work / part).mkdir(parents=True)
        (work / "app" / "pyproject.toml").write_text("")
        (work / "logs" / LOG_NAME).write_text("no run id here\n")
        if owner:
            (work / OWNER).write_text(json.dumps({"pid": 2**22 + 7, "marker": "no-such-mark"}))
        return work

    killed, orphan, starting = (
        work_dir("killed", True),
        work_dir("orphan", False),
        work_dir("starting", False),
    )
    old = time.time() - 2 * ORPHAN_AGE_S
    os.utime(orphan, (old, old))
    reap_abandoned(tmp_path)
    assert sorted(p.name for p in killed.iterdir()) == ["logs"]
    assert sorted(p.name for p in orphan.iterdir()) == ["logs"]
    assert sorted(p.name for p in starting.iterdir()) == ["app", "flwr-home", "logs"]
    reap_abandoned(tmp_path)  # again: nothing more to do, nothing lost
    assert (killed / "logs" / LOG_NAME).is_file()


@pytest.mark.parametrize("resumed", [False, True])
def test_a_killed_runners_run_gets_its_logs_and_says_interrupted(
    tmp_path: Path, resumed: bool
) -> None:
    """A resumed run keeps its first id as its directory, while `flwr run` logs a new one:
    the owner file names the directory."""
    run_dir = tmp_path / "1234"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"status": "running", "rounds": []}))
    work = tmp_path / f"{WORK_PREFIX}killed"
    (work / "logs").mkdir(parents=True)
    logged = "5678" if resumed else "1234"
    (work / "logs" / LOG_NAME).write_text(f"🎊 Successfully started run {logged}\n")
    owner = {"pid": 2**22 + 7, "marker": "no-such-mark", "run_dir": str(run_dir) if resumed else ""}
    (work / OWNER).write_text(json.dumps(owner))
    reap_abandoned(tmp_path)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    assert (run_dir / "logs" / LOG_NAME).is_file() and not work.exists()


def test_a_run_killed_before_its_first_round_gets_results_saying_interrupted(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "1234"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"seed": 3}))
    work = tmp_path / f"{WORK_PREFIX}killed"
    (work / "logs").mkdir(parents=True)
    (work / "logs" / LOG_NAME).write_text("🎊 Successfully started run 1234\n")
    (work / OWNER).write_text(json.dumps({"pid": 2**22 + 7, "marker": "no-such-mark"}))
    reap_abandoned(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["config"] == {"seed": 3}


def test_a_dead_runners_pid_taken_by_another_process_does_not_keep_its_run_running(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "1234"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"status": "running", "rounds": []}))
    work = tmp_path / f"{WORK_PREFIX}killed"
    (work / "logs").mkdir(parents=True)
    (work / "logs" / LOG_NAME).write_text("🎊 Successfully started run 1234\n")
    # this very process holds the PID now, but started at another time than the runner
    owner = {"pid": os.getpid(), "started": "1", "marker": "no-such-mark", "run_dir": ""}
    (work / OWNER).write_text(json.dumps(owner))
    reap_abandoned(tmp_path)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
