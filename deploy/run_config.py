"""Turn an experiment TOML into ``flwr run --run-config`` items.

``flwr run`` takes either one TOML file or ``key=value`` items, never both, and deploy-local
always adds items (rounds, absolute output dir). So the experiment's overrides are sent as
items too: ``[federation]`` and ``[experiment]`` tables are dropped (SuperNodes are real
processes here: ``--supernodes``), nested tables become dotted keys.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from task.config import flatten

NOT_RUN_CONFIG = ("federation", "experiment")


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal that ``flwr``'s ``key=value`` parser keeps whole."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
    raise ValueError(f"run-config value {value!r}: only bool, int, float and plain strings")


def experiment_items(path: Path) -> list[str]:
    """``key=value`` items for the run-config overrides in experiment file ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {path} does not exist")
    table = tomllib.loads(path.read_text())
    for key in NOT_RUN_CONFIG:
        table.pop(key, None)
    return [f"{k}={toml_value(v)}" for k, v in flatten(table).items()]


def run_config_flag(overrides: dict[str, Any]) -> list[str]:
    """One ``--run-config`` with every pair: Flower parses each flag as its own TOML document
    and merges them shallowly, so a second ``dp.*`` flag would drop the first ``dp.*`` key.
    """
    pairs = []
    for key, value in overrides.items():
        try:
            pairs.append(f"{key}={toml_value(value)}")
        except ValueError as error:
            raise ValueError(f"run-config key {key!r}: {error}") from None
    return ["--run-config", " ".join(pairs)]
