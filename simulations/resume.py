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

from simulations.experiment import DEFAULT_FEDERATION, Experiment, build_experiment
from task.config import LOCATION_KEYS, config_differences, load_defaults


def resume_experiment(
    run_dir: Path, path: Path | None, assignments: list[str], *, supernodes: int | None
) -> Experiment:
    """The experiment that continues ``run_dir``; a clear error if it cannot."""
    run_dir = run_dir.expanduser().resolve()
    recorded = _recorded(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    done, total = len(results["rounds"]), int(recorded["num-server-rounds"])
    if done >= total:
        raise ValueError(f"--resume {run_dir}: the run already completed all {total} rounds")
    nodes = int(results.get("num_nodes", DEFAULT_FEDERATION["num-supernodes"]))
    if supernodes is not None and supernodes != nodes:
        raise ValueError(f"--supernodes {supernodes}: the run in {run_dir} has {nodes} nodes")
    if path is not None or assignments:
        given = build_experiment(path, assignments, check_data=False).overrides
        _require_same(load_defaults() | given, recorded, run_dir)
    overrides = {k: v for k, v in recorded.items() if k not in LOCATION_KEYS}
    overrides |= {"output-dir": str(run_dir.parent), "resume-from": str(run_dir)}
    experiment = Experiment(overrides, DEFAULT_FEDERATION | {"num-supernodes": nodes})
    experiment.run_config  # noqa: B018  (validates the recorded config against today's keys)
    return experiment


def _recorded(run_dir: Path) -> dict[str, Any]:
    for name in ("config.json", "results.json", "checkpoint.npz"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"--resume {run_dir}: no {name} there; valid: a run directory of "
                "`fedequity run` whose first round completed"
            )
    config: dict[str, Any] = json.loads((run_dir / "config.json").read_text())
    if stale := sorted(set(load_defaults()) - set(config) - LOCATION_KEYS):
        raise ValueError(
            f"--resume {run_dir}: the run predates run-config key(s) {stale}; it can only be "
            "resumed by the version of FedEquity that started it"
        )
    return config


def _require_same(given: dict[str, Any], recorded: dict[str, Any], run_dir: Path) -> None:
    if shown := config_differences(recorded, given):
        raise ValueError(
            f"--resume {run_dir}: the experiment and --set values differ from the run's "
            f"config ({shown}); resume with the same ones, or with none"
        )
