from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import pytest

from server.records import RunDirectory, flat_row, mark_status


def test_run_directory_writes_contract_files_and_latest(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "123", {"seed": 1})
    assert json.loads((run.path / "config.json").read_text()) == {"seed": 1}
    assert not (tmp_path / "latest").exists()  # only a complete run becomes latest
    run.point_latest()
    assert (tmp_path / "latest").resolve() == run.path
    run.append_round({"round": 1, "global": {"accuracy": 0.5, "per_group": {"a": {"n": 3}}}})
    run.append_round({"round": 2, "global": {"accuracy": 0.75, "per_group": {"a": {"n": 3}}}})
    rows = list(csv.DictReader((run.path / "rounds.csv").open()))
    assert [r["global.accuracy"] for r in rows] == ["0.5", "0.75"]
    assert rows[0]["global.per_group.a.n"] == "3"
    second = RunDirectory(tmp_path, "124", {})
    assert (tmp_path / "latest").resolve() == run.path
    second.point_latest()
    assert (tmp_path / "latest").resolve() == second.path


def test_rounds_csv_keeps_columns_that_appear_after_round_one(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "9", {})
    run.append_round({"round": 1, "weights": {"11": 0.25, "22": 0.75}})
    run.append_round({"round": 2, "weights": {"33": 0.5, "44": 0.5}, "clients": {"mean": 0.5}})
    rows = list(csv.DictReader((run.path / "rounds.csv").open()))
    assert rows == [
        {"round": "1", "weights.11": "0.25", "weights.22": "0.75", "weights.33": "",
         "weights.44": "", "clients.mean": ""},
        {"round": "2", "weights.11": "", "weights.22": "", "weights.33": "0.5",
         "weights.44": "0.5", "clients.mean": "0.5"},
    ]  # fmt: skip
    assert not list(run.path.glob("*.tmp"))


def test_existing_run_directory_is_never_overwritten(tmp_path: Path) -> None:
    RunDirectory(tmp_path, "7", {"seed": 1})
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        RunDirectory(tmp_path, "7", {"seed": 2})
    assert json.loads((tmp_path / "7" / "config.json").read_text()) == {"seed": 1}


def test_results_are_strict_json(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "1", {})
    run.write_results({"final": {"max_epsilon": math.inf, "x": [math.nan, 1.0]}, "w": {3: 0.5}})
    text = (run.path / "results.json").read_text()
    assert json.loads(text) == {"final": {"max_epsilon": None, "x": [None, 1.0]}, "w": {"3": 0.5}}
    assert not list(run.path.glob("*.tmp"))


def test_flat_row_skips_lists() -> None:
    assert flat_row({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "d": "x"}


def test_a_stopped_run_is_marked_but_a_complete_one_stays_complete(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path, "r1", {"seed": 1})
    mark_status(run.path, "interrupted")  # stopped before its first round wrote results
    results = json.loads((run.path / "results.json").read_text())
    assert results == {"config": {"seed": 1}, "rounds": [], "privacy": {},
                       "final": {"max_epsilon": None},
                       "status": "interrupted"}  # fmt: skip
    results["status"] = "complete"
    (run.path / "results.json").write_text(json.dumps(results))
    mark_status(run.path, "failed")  # e.g. a refused resume of it, a stop after its last round
    assert json.loads((run.path / "results.json").read_text())["status"] == "complete"


def test_main_reports_sigterm_as_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import simulations.__main__ as cli
    from launch.signals import Interrupted

    def terminated(_argv: list[str]) -> int:
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(cli, "_dispatch", terminated)
    assert cli.main(["run"]) == 143
    assert capsys.readouterr().err.strip() == cli.INTERRUPTED
