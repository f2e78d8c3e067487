"""``fedequity evaluate``: a finished run's reported model, on its own or another test set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.__main__ import main
from simulations.experiment import build_experiment
from simulations.inprocess import run_in_process
from simulations.reevaluate import evaluate_run, evaluation_configs
from tests.conftest import SHARED_DATA

SETTINGS = ["num-server-rounds=2", "synthetic.num-examples=1500", "model.name=tiny-bert",
            "model.finetune=full", "dp.target-epsilon=4"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return run_in_process(build_experiment(None, SETTINGS, supernodes=3, output_dir=str(out)))[0]


@pytest.mark.slow
def test_without_set_it_reproduces_the_runs_last_recorded_metrics(run_dir: Path) -> None:
    recorded = json.loads((run_dir / "results.json").read_text())["rounds"][-1]["global"]
    again = evaluate_run(run_dir, [])
    assert again.pop("test_rows") == 300
    assert again == recorded


@pytest.mark.slow
def test_another_seed_and_size_give_a_fresh_larger_test_set(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(run_dir), "--set", "seed=999",
                 "--set", "synthetic.num-examples=3000", "--set", "data.test-fraction=0.5"]) == 0  # fmt: skip
    fresh = json.loads(capsys.readouterr().out)
    assert fresh["test_rows"] == 1500
    assert sum(g["n"] for g in fresh["per_group"].values()) == 1500
    recorded = json.loads((run_dir / "results.json").read_text())["final"]
    assert fresh["accuracy"] != recorded["accuracy"]


def test_a_key_that_is_not_about_data_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"--set model.name, strategy: evaluate keeps"):
        evaluation_configs(tmp_path, ["strategy=fedavg", "model.name=tiny-bert", "seed=3"])


def test_a_directory_without_a_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no config.json there" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{seed: 1")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.json'} is not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "adult").is_dir(), reason="needs ../shared/data/adult")
def test_test_data_with_other_labels_is_refused_naming_both(run_dir: Path) -> None:
    adult = ["dataset=adult", f"data.path={SHARED_DATA / 'adult'}", "data.group-column=race"]
    with pytest.raises(ValueError, match=r"the test data's labels .* are not the run's"):
        evaluate_run(run_dir, adult)
