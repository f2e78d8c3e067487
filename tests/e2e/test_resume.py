"""Checkpoint and resume: a run stopped at any point and resumed ends exactly as an
uninterrupted one (metrics and ε), and a killed runner leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server import checkpoint as checkpoints
from server.recorder import RoundRecorder
from simulations.experiment import build_experiment
from simulations.inprocess import run_in_process
from simulations.resume import resume_experiment
from tests.e2e.test_flwr_run import processes_started_under

pytestmark = pytest.mark.slow

# two of the three clients a round: a resumed run's nodes have new ids, and it must still
# draw the clients the uninterrupted run drew (strategies/sampling.py)
SETTINGS = ["model.name=tiny-bert", "model.finetune=full", "synthetic.num-examples=1500",
            "num-server-rounds=4", "dp.target-epsilon=4", "fraction-train=0.67"]  # fmt: skip
FAIRFED = [*SETTINGS, "strategy=fairfed"]  # a strategy with state of its own
REPO = Path(__file__).resolve().parents[2]


class ServerDied(Exception):
    """Stands for the server process dying at this point."""


def results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def epsilons(run: dict[str, Any]) -> list[float]:
    return sorted(float(p["epsilon"]) for p in run["privacy"].values())


def uninterrupted(tmp_path: Path, settings: list[str]) -> dict[str, Any]:
    experiment = build_experiment(None, settings, supernodes=3, output_dir=str(tmp_path / "a"))
    return results(run_in_process(experiment)[0])


def assert_same_run(resumed: dict[str, Any], reference: dict[str, Any]) -> None:
    assert [r["global"] for r in resumed["rounds"]] == [r["global"] for r in reference["rounds"]]
    assert resumed["final"] == reference["final"]
    assert epsilons(resumed) == epsilons(reference)
    assert len(resumed["privacy"]) == 3  # one report per client, not one per node id seen


def test_a_run_dying_after_its_clients_trained_resumes_to_the_same_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = uninterrupted(tmp_path, FAIRFED)
    evaluate = RoundRecorder.evaluate

    def dies_in_round_3(self: RoundRecorder, server_round: int, arrays: Any) -> Any:
        if server_round + self.round_offset == 3:  # clients trained round 3; no checkpoint
            raise ServerDied
        return evaluate(self, server_round, arrays)

    monkeypatch.setattr(RoundRecorder, "evaluate", dies_in_round_3)
    out = tmp_path / "b"
    with pytest.raises(ServerDied):
        run_in_process(build_experiment(None, FAIRFED, supernodes=3, output_dir=str(out)))
    (run_dir,) = (p.parent for p in out.glob("*/results.json"))
    assert not (out / "latest").exists()  # latest moves to complete runs only
    assert len(results(run_dir)["rounds"]) == 2
    assert results(run_dir)["status"] == "failed"
    ledgers = sorted(p.name for p in (run_dir / "ledgers").glob("*.json"))
    assert ledgers == ["partition-0.json", "partition-1.json", "partition-2.json"]
    last_rounds = [json.loads((run_dir / "ledgers" / n).read_text())["round"] for n in ledgers]
    assert last_rounds.count(3) == 2  # the two clients round 3 drew trained it
    monkeypatch.setattr(RoundRecorder, "evaluate", evaluate)

    resumed_dir, _ = run_in_process(resume_experiment(run_dir, None, [], supernodes=None))
    assert resumed_dir == run_dir
    assert_same_run(results(run_dir), reference)
    assert results(run_dir)["status"] == "complete"
    assert (out / "latest").resolve() == run_dir


def test_resume_refuses_another_config_and_a_finished_run(tmp_path: Path) -> None:
    experiment = build_experiment(None, SETTINGS, supernodes=3, output_dir=str(tmp_path))
    run_dir, _ = run_in_process(experiment)
    with pytest.raises(ValueError, match="already completed all 4 rounds"):
        resume_experiment(run_dir, None, [], supernodes=None)
    summary = results(run_dir)  # made a run stopped after round 2
    summary["rounds"], summary["status"] = summary["rounds"][:2], "interrupted"
    (run_dir / "results.json").write_text(json.dumps(summary))
    saved = checkpoints.load(run_dir)
    state = saved.state | {"rounds": saved.state["rounds"][:2]}
    checkpoints.save(run_dir, replace(saved, round=2, state=state))
    with pytest.raises(ValueError, match=r"differ from the run's config \(seed: run 42, given 7"):
        resume_experiment(run_dir, None, [*SETTINGS, "seed=7"], supernodes=None)
    checkpoint = (run_dir / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match=r"resume-from=.*differ from the run's config \(seed"):
        build_experiment(None, [*SETTINGS, f"resume-from={run_dir}", "seed=7"], supernodes=3)
    # the ServerApp's own check, all a deployed `flwr run` passes through
    other = build_experiment(None, [*SETTINGS, "seed=7"], supernodes=3)
    by_key = replace(other, overrides=other.overrides | {"resume-from": str(run_dir)})
    with pytest.raises(ValueError, match=r"config differs from the resumed run's \(seed: run 42"):
        run_in_process(by_key)
    assert results(run_dir) == summary  # a refused resume changes nothing
    assert (run_dir / "checkpoint.npz").read_bytes() == checkpoint
    with pytest.raises(ValueError, match="--supernodes 5: the run .* has 3 nodes"):
        resume_experiment(run_dir, None, [], supernodes=5)
    with pytest.raises(ValueError, match="--supernodes 5: the run .* has 3 nodes"):
        build_experiment(None, [*SETTINGS, f"resume-from={run_dir}"], supernodes=5)
    (run_dir / "checkpoint.npz").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoint.npz there"):
        resume_experiment(run_dir, None, [], supernodes=None)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulations", "run", *args]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_stopped_runner_leaves_nothing_running_and_resumes_to_the_uninterrupted_result(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # the in-process engine computes what `flwr run` does (tests/e2e/test_in_process.py)
    reference = uninterrupted(tmp_path, SETTINGS)
    out = tmp_path / "stopped"
    command = cli(*[a for s in SETTINGS for a in ("--set", s)], "--supernodes", "3",
                  "--output-dir", str(out))  # fmt: skip
    # A suite started in the background inherits SIGINT ignored, and so would the runner:
    # it gets Ctrl-C's default back, as at a terminal.
    runner = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = [p for p in out.glob("*/results.json") if len(results(p.parent)["rounds"]) >= 2]
            if done:
                break
            assert runner.poll() is None, "the run ended before it could be stopped"
            time.sleep(0.2)
        else:
            pytest.fail("round 2 never completed")
        os.kill(runner.pid, sig)
        _, stderr = runner.communicate(timeout=120)
        run_dir = done[0].parent
        deadline = time.monotonic() + 30  # the watchdog's grace is 5 s
        while processes_started_under(out) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_started_under(out) == []
        assert len(results(run_dir)["rounds"]) < 4
        if sig == signal.SIGINT:  # a clean stop: said so, marked so, no traceback
            assert runner.returncode == 130
            assert "interrupted" in stderr and "Traceback" not in stderr
            assert results(run_dir)["status"] == "interrupted"
            assert not list(out.glob("fedequity-*"))  # logs moved into the run directory
        else:
            assert results(run_dir)["status"] == "running"  # nothing ran to mark it
    finally:
        if runner.poll() is None:
            runner.kill()
    resumed = subprocess.run(cli("--resume", str(run_dir)), cwd=REPO, capture_output=True,
                             text=True, timeout=600, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(results(run_dir), reference)
    assert results(run_dir)["status"] == "complete"
    assert processes_started_under(out) == []
    assert not list(out.glob("fedequity-*"))  # the killed runner's work dir was cleaned up
    assert (run_dir / "logs" / "flwr-run.log").is_file()  # the first part's
    assert (run_dir / "logs-2" / "flwr-run.log").is_file()  # the resumed part's
