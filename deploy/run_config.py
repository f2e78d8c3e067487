"""Run-config overrides as the one ``flwr run --run-config`` flag Flower parses whole.

``flwr run`` takes either one TOML file or ``key=value`` items, never both, and deploy-local
always adds items (rounds, absolute output dir). So every override, the experiment file's
included, travels as a ``key=value`` pair.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from task.config import flatten


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


def load_experiment_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an experiment TOML into run-config overrides (nested tables as dotted keys)
    and federation settings; the free-form ``[experiment]`` block is dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {path} does not exist")
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"experiment file {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"experiment file {path} is not UTF-8 text: {error}") from None
    federation = table.pop("federation", {})
    table.pop("experiment", None)
    return flatten(table), federation


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
