"""The evidence sweep: variants × ε × seeds (× partition skew), each cell a real `flwr run`.

A grid file (``simulations/experiments/evidence/*.toml``)::

    [evidence]
    name = "synthetic"
    variants = ["fedavg", "representation+post-clip", ...]
    epsilons = [4.0, 8.0, "inf"]          # "inf" = DP off
    seeds = [1, 2, 3]
    skews = [0.1, 0.3, 1.0]               # partition.alpha, for skew-variants only
    skew-variants = ["fedavg", "representation"]
    [evidence.overrides]                  # run-config overrides for every cell
    [evidence.no-dp-overrides]            # and for ε = ∞ cells (DP-SGD's step size diverges
                                          # without clipping: a non-private optimiser)
    [federation]
    num-supernodes = 10

Finished cells are kept under ``<output-dir>/cells/`` and skipped on the next call, so a
sweep can be run in pieces and resumed. A summary counts only while the run config and
federation it records equal what the cell resolves to now (defaults, grid and variant): after
a default or a grid file changes, the affected cells are stale, re-run, and not reported.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import tomllib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from server.records import write_json
from simulations.experiment import Experiment, build_experiment
from simulations.inprocess import run_in_process
from simulations.runner import run_experiment
from task.config import LOCATION_KEYS, flatten, load_defaults

_BASE_VARIANTS: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": "fedavg", "fair.local-weighting": "off"},
    "qfedavg": {"strategy": "qfedavg", "fair.local-weighting": "off"},
    "fairfed": {"strategy": "fairfed", "fair.local-weighting": "off"},
    "representation": {"strategy": "representation", "fair.local-weighting": "off"},
    "representation+post-clip": {"strategy": "representation", "fair.local-weighting": "post-clip"},
    "representation+pre-clip": {"strategy": "representation", "fair.local-weighting": "pre-clip"},
    "fedavg+post-clip": {"strategy": "fedavg", "fair.local-weighting": "post-clip"},
    "representation+sampling": {"strategy": "representation", "fair.local-weighting": "sampling"},
    "fedavg+sampling": {"strategy": "fedavg", "fair.local-weighting": "sampling"},
}
# Every variant without augmentation, and "<variant>+counterfactual" / "+synthesize".
VARIANTS: dict[str, dict[str, Any]] = {
    f"{name}{suffix}": keys | {"augment.method": method}
    for name, keys in _BASE_VARIANTS.items()
    for suffix, method in (("", "none"), ("+counterfactual", "counterfactual"),
                           ("+synthesize", "synthesize"))
}  # fmt: skip
REPORTED = ("accuracy", "balanced_accuracy", "worst_group_accuracy", "group_accuracy_gap",
            "equalized_odds_difference", "demographic_parity_difference",
            "counterfactual_flip_rate")  # fmt: skip


@dataclass(frozen=True)
class Cell:
    grid: str
    variant: str
    epsilon: float
    seed: int
    skew: float | None  # None: the grid's default partition.alpha

    @property
    def key(self) -> str:
        skew = "" if self.skew is None else f"-a{self.skew:g}"
        return f"{self.grid}-{self.variant}-eps{self.epsilon:g}{skew}-s{self.seed}"

    def overrides(
        self, base: dict[str, Any], no_dp: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run-config of the cell; ``no_dp`` (the grid's optimiser without DP) when ε = ∞."""
        cell = base | VARIANTS[self.variant] | {"seed": self.seed}
        if math.isinf(self.epsilon):
            cell |= {"dp.mode": "off", **(no_dp or {})}
        else:
            cell["dp.target-epsilon"] = self.epsilon
        if self.skew is not None:
            cell["partition.alpha"] = self.skew
        return cell


@dataclass(frozen=True)
class Grid:
    name: str
    cells: tuple[Cell, ...]
    overrides: dict[str, Any]
    federation: dict[str, Any]
    no_dp_overrides: dict[str, Any]


REQUIRED = ("name", "variants", "epsilons", "seeds")
#: keys whose default changed results when they were added: what a run before them did
PREDATED = {"augment.variant-loss": "mean", "ema-decay": 0.0, "fair.min-batch-share": 0.0}
# Keys each cell sets itself: a grid override of one would make cells lie about their label.
SET_BY_CELL = ("strategy", "fair.local-weighting", "augment.method", "seed", "dp.mode",
               "dp.target-epsilon")  # fmt: skip


def _epsilon(value: Any, path: Path) -> float:
    if value == "inf":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f'{path}: epsilons must be numbers > 0 or "inf", got {value!r}')
    return float(value)


def _check_spec(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    """Required keys, known variants, and overrides that leave the cells' own keys alone."""
    if missing := [key for key in REQUIRED if not spec.get(key)]:
        raise ValueError(f"{path}: [evidence] needs {missing} (all of {list(REQUIRED)})")
    unknown = sorted((set(spec["variants"]) | set(spec.get("skew-variants", []))) - set(VARIANTS))
    if unknown:
        raise ValueError(f"{path}: unknown variant(s) {unknown}; valid: {sorted(VARIANTS)}")
    overrides = flatten(spec.get("overrides", {}))
    for table, keys in (
        ("overrides", overrides),
        ("no-dp-overrides", spec.get("no-dp-overrides", {})),
    ):
        if clash := sorted(set(keys) & set(SET_BY_CELL)):
            raise ValueError(f"{path}: [evidence.{table}] may not set {clash}: each cell sets them")
    return overrides


def load_grid(path: Path) -> Grid:
    """Read a grid file and expand it into cells; a bad file is named with the key."""
    with path.open("rb") as handle:
        try:
            table = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML ({error})") from None
    spec = table.get("evidence")
    if spec is None:
        raise ValueError(f"{path}: missing [evidence] table")
    overrides = _check_spec(spec, path)
    name = spec["name"]
    cells = [
        Cell(name, v, _epsilon(e, path), int(s), None)
        for v in spec["variants"] for e in spec["epsilons"] for s in spec["seeds"]
    ]  # fmt: skip
    # A skew equal to the grid's own partition.alpha is the main cell: run it once.
    base_alpha = overrides.get("partition.alpha", load_defaults()["partition.alpha"])
    cells += [
        Cell(name, v, _epsilon(spec.get("skew-epsilon", 8.0), path), int(s),
             None if float(a) == base_alpha else float(a))
        for v in spec.get("skew-variants", []) for a in spec.get("skews", [])
        for s in spec["seeds"]
    ]  # fmt: skip
    cells = list(dict.fromkeys(cells))
    no_dp = flatten(spec.get("no-dp-overrides", {}))
    return Grid(name, tuple(cells), overrides, table.get("federation", {}), no_dp)


def select(cells: tuple[Cell, ...], **only: set[Any] | None) -> Iterator[Cell]:
    """Cells whose fields are in the given sets (``None``: no filter)."""
    for cell in cells:
        if all(
            allowed is None or getattr(cell, field) in allowed for field, allowed in only.items()
        ):
            yield cell


def cell_experiment(
    grid: Grid, cell: Cell, runs_dir: Path, *, check_data: bool = True
) -> Experiment:
    """The validated experiment of one cell, its runs under ``runs_dir``."""
    cell_config = cell.overrides(grid.overrides, grid.no_dp_overrides)
    assignments = [f"{k}={json.dumps(v)}" for k, v in cell_config.items()]
    return build_experiment(
        None, assignments, output_dir=str(runs_dir), federation=grid.federation,
        check_data=check_data,
    )  # fmt: skip


def infeasible(grid: Grid, cells: Iterable[Cell]) -> dict[Cell, str]:
    """Cells that can never run, with the reason: their config or data is refused.

    Checked once per (ε, seed, skew, augmentation), what decides it: the data and its
    partition depend on seed and skew, the budget check on ε, the augmentation check on the
    variant's method.
    """
    reasons: dict[tuple[float, int, float | None, str], str | None] = {}
    found: dict[Cell, str] = {}
    for cell in cells:
        pattern = (cell.epsilon, cell.seed, cell.skew, VARIANTS[cell.variant]["augment.method"])
        if pattern not in reasons:
            try:
                cell_experiment(grid, cell, Path("outputs"))
                reasons[pattern] = None
            except (ValueError, FileNotFoundError) as error:
                reasons[pattern] = str(error)
        if (reason := reasons[pattern]) is not None:
            found[cell] = reason
    return found


def summary_path(output_dir: Path, cell: Cell) -> Path:
    return output_dir / "cells" / f"{cell.key}.json"


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a run config that decide its results.

    Left out: where outputs go; ``data.path``, which the cell's grid fixes (resolved to an
    absolute path, it would void every cell of a moved checkout); and keys the run never
    reads given its strategy and local weighting, so that adding or changing, say, a
    q-FedAvg default does not void FedAvg cells.
    """
    unread = set(LOCATION_KEYS) | {"data.path"}
    if config.get("strategy") != "qfedavg":
        unread |= {"qfedavg.q", "qfedavg.learning-rate"}
    if config.get("strategy") != "fairfed":
        unread.add("fair.fairfed-beta")
    if config.get("model.finetune") != "lora":
        unread |= {"model.lora.r", "model.lora.alpha", "model.lora.dropout"}
    if config.get("model.finetune") not in ("head", "top-layers"):
        unread |= {"model.train-layers", "model.head-hidden"}
    if config.get("fair.local-weighting") == "off":
        unread |= {"fair.local-alpha", "fair.local-max-weight", "fair.local-shares"}
    if config.get("fair.local-weighting") != "sampling":
        unread.add("fair.min-batch-share")
    if config.get("strategy") != "representation":  # the only strategy that sends shares
        unread.add("fair.local-shares")
    if config.get("augment.method") != "counterfactual":
        unread |= {"augment.k", "augment.variant-loss"}
    if config.get("augment.method") != "synthesize":
        unread.add("augment.min-share")
    if config.get("augment.method") == "none":
        unread.add("augment.lexicon")
    return {key: value for key, value in config.items() if key not in unread}


def is_current(grid: Grid, cell: Cell, output_dir: Path) -> bool:
    """Has the cell a summary of a run with the config the cell resolves to today?"""
    path = summary_path(output_dir, cell)
    if not path.exists():
        return False
    recorded = json.loads(path.read_text())
    today = cell_experiment(grid, cell, output_dir / "runs", check_data=False)
    return (
        # A key the recorded run predates reads as the behaviour before it: today's default,
        # or, where the new key's default changed the behaviour, PREDATED.
        comparable(load_defaults() | PREDATED | recorded.get("config", {}))
        == comparable(load_defaults() | today.overrides)
        and recorded.get("federation") == today.federation
    )


def current_and_stale(
    grid: Grid, cells: Iterable[Cell], output_dir: Path
) -> tuple[list[Cell], list[Cell]]:
    """In one pass: cells with a current summary, and cells whose summary is of a run at a
    config that is no longer the cell's."""
    current: list[Cell] = []
    stale: list[Cell] = []
    for cell in cells:
        if is_current(grid, cell, output_dir):
            current.append(cell)
        elif summary_path(output_dir, cell).exists():
            stale.append(cell)
    return current, stale


def run_cells(
    grid: Grid, cells: list[Cell], output_dir: Path, *, in_process: bool = False, jobs: int = 1
) -> None:
    """Run every cell without a current summary: each with ``flwr run`` on its own
    SuperLink, or (``in_process``) with the in-process engine, which computes the same
    results (``tests/e2e/test_in_process.py``) without Flower's start-up, in ``jobs``
    worker processes at once (a cell's clients run one after another, so this is what
    uses the cores that Ray's actors use in a ``flwr run``)."""
    runs_dir = output_dir / "runs"
    (output_dir / "cells").mkdir(parents=True, exist_ok=True)
    prepared: list[tuple[Cell, Experiment]] = []
    for cell in (c for c in cells if not is_current(grid, c, output_dir)):
        try:
            prepared.append((cell, cell_experiment(grid, cell, runs_dir)))
        except (ValueError, FileNotFoundError) as error:
            tqdm.write(f"{cell.key}: cannot run: {error}")
    with tqdm(total=len(prepared), desc=f"evidence {grid.name}", unit="run") as progress:
        for cell, experiment, outcome in _outcomes(prepared, in_process, jobs):
            progress.update()
            if isinstance(outcome, Exception):
                tqdm.write(f"{cell.key}: failed: {outcome}")
                continue
            _record(cell, experiment, outcome, output_dir, in_process)


def _outcomes(
    prepared: list[tuple[Cell, Experiment]], in_process: bool, jobs: int
) -> Iterator[tuple[Cell, Experiment, Path | Exception]]:
    """Each cell's run directory, or the error that failed it, as the cells finish."""
    if not in_process or jobs <= 1 or len(prepared) <= 1:
        for cell, experiment in prepared:
            yield cell, experiment, _run_cell(experiment, in_process)
        return
    # spawn, not fork: a forked process inherits torch's thread pools mid-state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_share_cores, initargs=(jobs,)
    ) as pool:
        futures = {pool.submit(_run_cell, e, True): (c, e) for c, e in prepared}
        for future in as_completed(futures):
            yield *futures[future], future.result()


def _share_cores(jobs: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _run_cell(experiment: Experiment, in_process: bool) -> Path | Exception:
    try:
        return run_in_process(experiment)[0] if in_process else run_experiment(experiment)
    except (RuntimeError, TimeoutError) as error:  # RunFailed is one; a cell, not the sweep
        return error


def _record(
    cell: Cell, experiment: Experiment, run_dir: Path, output_dir: Path, in_process: bool
) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    failures = sum(r["failures"] for r in results["rounds"])
    if failures:  # a failed client disqualifies a cell; a rejected or skipped reply does not
        tqdm.write(f"{cell.key}: {failures} client failure(s), not counted; see {run_dir}")
        return
    write_json(summary_path(output_dir, cell), summarise(cell, results, run_dir) | {
        "config": results["config"], "federation": experiment.federation,
        "engine": "in-process" if in_process else "flower",
    })  # fmt: skip


def summarise(cell: Cell, results: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    final = results["final"]
    return {
        "grid": cell.grid,
        "variant": cell.variant,
        "epsilon": None if math.isinf(cell.epsilon) else cell.epsilon,
        "seed": cell.seed,
        "skew": cell.skew,
        "partition_alpha": results["config"]["partition.alpha"],
        "run_dir": str(run_dir),
        "wall_s": sum(r["wall_s"] for r in results["rounds"]),
        "max_epsilon": final.get("max_epsilon"),
        **{key: final.get(key) for key in REPORTED},  # no flip rate without counterfactual sets
    }
