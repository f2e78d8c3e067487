"""``fedequity run --resume RUN_DIR``: continue a stopped run from its last checkpoint.

The run goes on in its own directory with its own config: the experiment and ``--set``
values, if given, must resolve to exactly that config (a resumed run that trained on
other settings would be neither run). Clients pick their privacy ledgers up from
``RUN_DIR/ledgers/`` (:mod:`clients.ledger_store`), so no ε starts again from zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server import checkpoint
from simulations.experiment import DEFAULT_FEDERATION, Experiment, build_experiment
from task.config import LOCATION_KEYS, config_differences, load_defaults


def resume_experiment(
    run_dir: Path, path: Path | None, assignments: list[str], *, supernodes: int | None
) -> Experiment:
    """The experiment that continues ``run_dir``; a clear error if it cannot."""
    run_dir = run_dir.expanduser().resolve()
    label = f"--resume {run_dir}"
    recorded, results = _resumable(run_dir, label)
    nodes = _require_nodes(supernodes, results, run_dir)
    if path is not None or assignments:
        given = build_experiment(path, assignments, check_data=False).overrides
        _require_same(load_defaults() | given, recorded, label)
    overrides = {k: v for k, v in recorded.items() if k not in LOCATION_KEYS}
    overrides |= {"output-dir": str(run_dir.parent), "resume-from": str(run_dir)}
    experiment = Experiment(overrides, DEFAULT_FEDERATION | {"num-supernodes": nodes})
    experiment.run_config  # noqa: B018  (validates the recorded config against today's keys)
    return experiment


def check_resume_from(run_dir: Path, overrides: dict[str, Any], *, supernodes: int) -> None:
    """``--set resume-from=RUN_DIR``: the checks of ``--resume``, before anything starts
    (the ServerApp checks the config again, for a deployed ``flwr run``)."""
    label = f"resume-from={run_dir}"
    recorded, results = _resumable(run_dir, label)
    _require_same(load_defaults() | overrides, recorded, label)
    _require_nodes(supernodes, results, run_dir)


def _resumable(run_dir: Path, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config and results of a run that can continue; ``label`` names the input."""
    for name in ("config.json", "results.json", "checkpoint.npz"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{label}: no {name} there; valid: a run directory of "
                "`fedequity run` whose first round completed"
            )
    config: dict[str, Any] = json.loads((run_dir / "config.json").read_text())
    if stale := sorted(set(load_defaults()) - set(config) - LOCATION_KEYS):
        raise ValueError(
            f"{label}: the run predates run-config key(s) {stale}; it can only be "
            "resumed by the version of FedEquity that started it"
        )
    results: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    total = int(config["num-server-rounds"])
    # the checkpoint, not results.json, says where a run goes on: a kill between the last
    # round's results and its checkpoint leaves every round recorded and one to run again
    if checkpoint.load(run_dir).round >= total:
        raise ValueError(f"{label}: the run already completed all {total} rounds")
    return config, results


def _require_nodes(supernodes: int | None, results: dict[str, Any], run_dir: Path) -> int:
    """The run's node count, which ``supernodes`` (if given) must equal."""
    nodes = int(results.get("num_nodes", DEFAULT_FEDERATION["num-supernodes"]))
    if supernodes is not None and supernodes != nodes:
        raise ValueError(f"--supernodes {supernodes}: the run in {run_dir} has {nodes} nodes")
    return nodes


def _require_same(given: dict[str, Any], recorded: dict[str, Any], label: str) -> None:
    if shown := config_differences(recorded, given):
        raise ValueError(
            f"{label}: the experiment and --set values differ from the run's "
            f"config ({shown}); resume with the same ones, or with none"
        )
