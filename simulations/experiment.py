"""Experiments: a TOML of run-config overrides (+ a ``[federation]`` table) and ``--set`` values."""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.run_config import load_experiment_file, run_config_flag
from task.cache import feature_cache_limit
from task.config import RunConfig, load_defaults, parse_run_config

FEDERATION_KEYS = {"num-supernodes": int, "client-cpus": int}
DEFAULT_FEDERATION = {"num-supernodes": 10, "client-cpus": 1}


@dataclass(frozen=True)
class Experiment:
    """Run-config overrides and federation settings of one run, validated."""

    overrides: dict[str, Any]
    federation: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FEDERATION))

    @property
    def run_config(self) -> RunConfig:
        return parse_run_config(load_defaults() | self.overrides)


def parse_value(text: str) -> Any:
    """A ``--set`` value typed as in TOML; bare words that TOML rejects stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        parsed[key.strip()] = parse_value(value.strip())
    return parsed


def _check_federation(federation: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(federation) - set(FEDERATION_KEYS))
    if unknown:
        raise ValueError(f"unknown [federation] key(s) {unknown}; valid: {sorted(FEDERATION_KEYS)}")
    checked = DEFAULT_FEDERATION | federation
    if not isinstance(checked["num-supernodes"], int) or checked["num-supernodes"] < 2:
        raise ValueError("federation 'num-supernodes' must be an int >= 2")
    if not isinstance(checked["client-cpus"], int) or not 1 <= checked["client-cpus"] <= 64:
        raise ValueError("federation 'client-cpus' must be an int in [1, 64]")
    return checked


def check_output_dir(output_dir: str) -> None:
    """``output-dir`` must be (or become) a directory this process can write in; a missing
    one is not created here, so a run refused by a later check leaves nothing behind."""
    path = Path(output_dir).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise ValueError(f"--output-dir / output-dir {str(path)!r} {where}; valid: a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):  # where the missing part will be made
            pass
    except OSError as error:
        raise ValueError(
            f"--output-dir / output-dir {str(path)!r} is not writable ({error.strerror})"
        ) from None


def build_experiment(
    path: Path | None,
    assignments: list[str],
    *,
    supernodes: int | None = None,
    output_dir: str | None = None,
    federation: dict[str, Any] | None = None,
    check_data: bool = True,
    check_slow: bool = True,
) -> Experiment:
    """Experiment file, then ``--set`` and ``federation``, then the dedicated flags;
    validated before any run: keys, output directory, and (``check_slow``, else the
    caller runs :func:`check_experiment`) model, budget and data."""
    overrides, file_federation = load_experiment_file(path) if path else ({}, {})
    federation = file_federation | (federation or {})
    overrides |= parse_assignments(assignments)
    if output_dir is not None:
        overrides["output-dir"] = output_dir
    # Flower's processes run elsewhere: pin paths to the caller's cwd
    for key in ("data.path", "augment.lexicon", "resume-from"):
        if isinstance(overrides.get(key), str) and overrides[key]:
            overrides[key] = str(Path(overrides[key]).expanduser().resolve())
    if supernodes is not None:
        federation["num-supernodes"] = supernodes
    experiment = Experiment(overrides=overrides, federation=_check_federation(federation))
    cfg = experiment.run_config  # validates every key now, before anything starts
    if cfg.resume_from:
        from simulations.resume import check_resume_from  # it builds experiments itself

        check_resume_from(
            Path(cfg.resume_from), overrides, supernodes=experiment.federation["num-supernodes"]
        )
    check_output_dir(cfg.output_dir)
    feature_cache_limit()  # the clients read it at their first cache write
    run_config_flag(overrides)  # and that each value survives Flower's key=value parser
    if check_slow:
        check_experiment(experiment, check_data=check_data)
    return experiment


def check_experiment(experiment: Experiment, *, check_data: bool = True) -> None:
    """The checks that take seconds (imports of torch, transformers, datasets): the model,
    the budget and (``check_data``) that the data loads and partitions, and that some
    client can train within the budget."""
    from task.augment import check_augmentation
    from task.data import check_partitions, group_names, load_splits
    from task.model import check_model_source
    from task.privacy_plan import check_client_budgets, check_release_budget

    cfg = experiment.run_config
    if cfg.dp.local:
        check_release_budget(cfg)  # as the ServerApp will, but before a SuperLink starts
    online = os.environ.get("FEDEQUITY_ONLINE") == "1"
    check_model_source(cfg.model, online=online)
    groups = None
    # A hub dataset would download here: with FEDEQUITY_ONLINE=1 the clients check it.
    if check_data and not (cfg.data.dataset == "hf" and online):
        nodes = experiment.federation["num-supernodes"]
        sizes = check_partitions(cfg.data, cfg.partition, nodes, cfg.seed)
        if cfg.dp.local:
            check_client_budgets(cfg, sizes)
        groups = group_names(load_splits(cfg.data, cfg.seed))  # loaded by the check: cached
    check_augmentation(cfg.augment, cfg.data, groups)
