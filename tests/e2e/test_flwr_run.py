"""One real `flwr run` end to end: private SuperLink, Ray simulation, results contract."""

from __future__ import annotations

import json
import math
from pathlib import Path

import psutil
import pytest

from simulations.experiment import build_experiment
from simulations.runner import run_experiment

pytestmark = pytest.mark.slow

GLOBAL_KEYS = {
    "accuracy", "balanced_accuracy", "loss", "per_group", "worst_group_accuracy",
    "group_accuracy_gap", "demographic_parity_difference", "equalized_odds_difference",
}  # fmt: skip
ROUND_KEYS = {"round", "wall_s", "client_train_s", "num_clients", "failures", "global",
              "clients", "weights"}  # fmt: skip


def processes_started_under(root: Path) -> list[psutil.Process]:
    """Processes whose FLWR_HOME lies under ``root``: everything the run started."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME", "").startswith(str(root)):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_flwr_run_writes_the_results_contract_and_stops_everything(tmp_path: Path) -> None:
    experiment = build_experiment(
        None,
        [
            "num-server-rounds=2",
            "strategy=representation",
            "synthetic.num-examples=2000",
            "dp.mode=both",
            "dp.target-epsilon=4",
            "augment.method=counterfactual",  # the lexicon travels in the FAB
        ],
        supernodes=4,
        output_dir=str(tmp_path),
    )
    run_dir = run_experiment(experiment)

    assert run_dir.parent == tmp_path
    assert (tmp_path / "latest").resolve() == run_dir
    results = json.loads((run_dir / "results.json").read_text())
    assert {"config", "rounds", "privacy", "final"} <= set(results)
    assert results["config"]["strategy"] == "representation"
    assert results["config"]["augment.method"] == "counterfactual"
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert set(record) >= ROUND_KEYS
        assert set(record["global"]) >= GLOBAL_KEYS
        assert record["num_clients"] == 4
        assert set(record["global"]["per_group"]) == {"east", "north", "south", "west"}
        assert sum(record["weights"].values()) == pytest.approx(1.0)
        assert set(record["clients"]) == {"mean_accuracy", "std_accuracy", "worst10_accuracy"}
    assert set(results["final"]) >= GLOBAL_KEYS
    assert "max_epsilon" in results["final"]
    # central DP: each round charged once, journalled before its aggregate went anywhere
    assert len(results["central_privacy"]["history"]) == 2
    assert len((run_dir / "central-releases.jsonl").read_text().splitlines()) == 2
    assert math.isfinite(results["final"]["central_epsilon"])
    privacy = results["privacy"]  # simulated nodes: seeded, reproducible DP noise
    assert len(privacy) == 4 and all(p["secure_rng"] is False for p in privacy.values())
    assert json.loads((run_dir / "config.json").read_text())["num-server-rounds"] == 2
    assert len((run_dir / "rounds.csv").read_text().splitlines()) == 3
    assert processes_started_under(tmp_path) == []


@pytest.mark.parametrize(("strategy", "augment"), [("qfedavg", "synthesize"), ("fairfed", "none")])
def test_baselines_run_end_to_end(strategy: str, augment: str, tmp_path: Path) -> None:
    experiment = build_experiment(
        None,
        [f"strategy={strategy}", "num-server-rounds=2", "synthetic.num-examples=2000",
         "dp.mode=off", "train.optimizer=adamw", "train.learning-rate=0.003",
         f"augment.method={augment}"],
        supernodes=4,
        output_dir=str(tmp_path),
    )  # fmt: skip
    results = json.loads((run_experiment(experiment) / "results.json").read_text())
    assert [r["num_clients"] for r in results["rounds"]] == [4, 4]
    marker = {"qfedavg": "qfedavg-step-scale", "fairfed": "fair-global-metric"}[strategy]
    for record in results["rounds"]:
        assert len(record["weights"]) == 4 and record["rejected"] == {}
        assert sum(record["weights"].values()) == pytest.approx(1.0)
        assert record["failures"] == 0
        assert math.isfinite(record["extras"][marker])  # the named strategy aggregated
    assert processes_started_under(tmp_path) == []
