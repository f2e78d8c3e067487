"""``fedequity evaluate RUN_DIR [--set key=value …]``: a finished run's model on a test set.

The model is the one the run reported (its checkpoint's moving average, else its last
aggregate); the test set is the run's own, or another one named by ``--set`` of the keys
that choose data (``seed``, ``dataset``, ``data.*``, ``synthetic.*``). With no ``--set`` it
reproduces the run's last recorded ``global`` metrics; with a larger or independent test
draw it tells how much of a metric was test-sampling noise (a rare group may have 100 test
rows in a run's own split).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from server.checkpoint import load
from simulations.experiment import parse_assignments
from task.config import load_defaults, parse_run_config

DATA_KEY_PREFIXES = ("data.", "synthetic.")
DATA_KEYS = {"seed", "dataset"}


def is_data_key(key: str) -> bool:
    """Whether ``key`` chooses the evaluation data (and nothing about the model)."""
    return key in DATA_KEYS or key.startswith(DATA_KEY_PREFIXES)


def evaluation_configs(
    run_dir: Path, assignments: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's recorded config, and it with the ``--set`` data keys applied; a clear
    error for a missing run or a key that is not about data."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluate {run_dir}: no config.json there; valid: a run directory of "
            "`fedequity run` whose first round completed"
        )
    overrides = parse_assignments(assignments)
    if refused := sorted(k for k in overrides if not is_data_key(k)):
        raise ValueError(
            f"--set {', '.join(refused)}: evaluate keeps the run's model and training; valid "
            f"keys choose the test data: {', '.join(sorted(DATA_KEYS))}, data.*, synthetic.*"
        )
    try:
        recorded: dict[str, Any] = load_defaults() | json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"evaluate {run_dir}: {path} is not valid JSON ({error})") from None
    return recorded, recorded | overrides


def evaluate_run(run_dir: Path, assignments: list[str]) -> dict[str, Any]:
    """The contract's ``global`` metrics of the run's reported model on the chosen test set,
    with ``test_rows`` (how many it had)."""
    from server.evaluation import build_evaluator  # torch and the encoder: only when asked

    recorded, chosen = evaluation_configs(run_dir, assignments)
    # The model (and a tokenizer trained on the run's texts) is the run's own; only the
    # test split comes from the --set data.
    run = parse_run_config(recorded)
    test_from = None if chosen == recorded else parse_run_config(chosen)
    checkpoint = load(run_dir)
    reported = checkpoint.averaged if checkpoint.averaged is not None else checkpoint.arrays
    try:
        evaluator = build_evaluator(run, test_from)
    except ValueError as error:
        raise ValueError(f"evaluate {run_dir}: {error}") from error
    weights = {name: torch.from_numpy(value.copy()) for name, value in reported.items()}
    return evaluator.evaluate(weights) | {"test_rows": len(evaluator.test.labels)}
