"""The in-process engine (the compute floor) computes what `flwr run` computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.experiment import build_experiment
from simulations.inprocess import run_in_process
from simulations.runner import run_experiment

pytestmark = pytest.mark.slow

SETTINGS = [
    "num-server-rounds=2",
    "synthetic.num-examples=1500",
    "model.name=tiny-bert",
    "model.finetune=full",
    "strategy=representation",
    "dp.target-epsilon=4",
]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _client_epsilons(results: dict) -> list[float]:
    return sorted(float(v["epsilon"]) for v in results["privacy"].values())


def test_in_process_engine_reproduces_a_seeded_flwr_run(tmp_path: Path) -> None:
    # two clients of three a round: Flower's node ids differ between the engines, the seeded
    # draw over partitions does not (strategies/sampling.py)
    sampled = [*SETTINGS, "fraction-train=0.67", "fraction-evaluate=0.67"]

    def experiment(engine: str):  # type: ignore[no-untyped-def]
        return build_experiment(None, sampled, supernodes=3, output_dir=str(tmp_path / engine))

    flower = _results(run_experiment(experiment("flower")))
    in_process_dir, grid = run_in_process(experiment("in-process"))
    in_process = _results(in_process_dir)

    for ours, theirs in zip(in_process["rounds"], flower["rounds"], strict=True):
        assert ours["global"] == theirs["global"]
        assert ours["num_clients"] == theirs["num_clients"] == 2
        assert ours["clients"] == theirs["clients"]  # the same clients evaluated
        assert sorted(ours["weights"].values()) == pytest.approx(sorted(theirs["weights"].values()))
    assert _client_epsilons(in_process) == pytest.approx(_client_epsilons(flower))
    assert grid.client_seconds > 0


PARALLEL_GRID = """
[evidence]
name = "p"
variants = ["fedavg", "representation+sampling"]
epsilons = [4.0]
seeds = [1]
[evidence.overrides]
dataset = "synthetic"
"num-server-rounds" = 2
"synthetic.num-examples" = 1500
"model.name" = "tiny-bert"
"model.finetune" = "full"
[federation]
num-supernodes = 3
"""


def test_cells_in_parallel_workers_report_what_they_report_one_after_another(
    tmp_path: Path,
) -> None:
    from simulations.evidence import REPORTED, load_grid, run_cells, summary_path

    path = tmp_path / "p.toml"
    path.write_text(PARALLEL_GRID)
    grid = load_grid(path)
    for jobs in (1, 2):
        run_cells(grid, list(grid.cells), tmp_path / f"jobs{jobs}", in_process=True, jobs=jobs)
    for cell in grid.cells:
        alone, parallel = (
            json.loads(summary_path(tmp_path / f"jobs{jobs}", cell).read_text()) for jobs in (1, 2)
        )
        assert {m: alone[m] for m in REPORTED} == {m: parallel[m] for m in REPORTED}
        assert alone["max_epsilon"] == parallel["max_epsilon"]


def test_a_run_whose_clients_all_fail_is_marked_failed_and_not_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every client failing a round, with no fault asked for, fails the run: its status
    says so and ``latest`` stays where it was (here: nowhere)."""
    import clients.app
    from simulations.runner import RunFailed

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a client that cannot train")

    monkeypatch.setattr(clients.app, "train_round", fails)
    experiment = build_experiment(None, SETTINGS, supernodes=3, output_dir=str(tmp_path))
    with pytest.raises(RunFailed, match=r"round\(s\) \[1, 2\] ended without an aggregate"):
        run_in_process(experiment)
    (run_dir,) = (p.parent for p in tmp_path.glob("*/results.json"))
    assert _results(run_dir)["status"] == "failed"
    assert not (tmp_path / "latest").exists()
