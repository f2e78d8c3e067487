"""The central no-DP ceiling of a fine-tuning mode (simulations/benchmarks/mode_ceiling.py)."""

from __future__ import annotations

import pytest

from simulations.benchmarks.mode_ceiling import ceiling
from task.config import load_defaults, parse_run_config


@pytest.mark.slow
def test_the_head_fit_centrally_learns_the_synthetic_task_for_every_group() -> None:
    cfg = parse_run_config(load_defaults() | {"synthetic.num-examples": 1500, "seed": 1})
    accuracy = ceiling(cfg, "head")
    assert set(accuracy) == {"all", "north", "south", "east", "west"}
    assert accuracy["all"] > 0.85  # the label prior is about 0.5
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
