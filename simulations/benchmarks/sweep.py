"""Sweep throughput: evidence cells per hour, the sweep runner vs one fresh run per cell.

    python simulations/benchmarks/sweep.py [--variants fedavg,representation+sampling]
        [--epsilons 4,8] [--seeds 1,2,3] [--set key=value …]

A synthetic grid of ``variants × epsilons × seeds`` cells (12 by default), run three
times in one sitting with one private cache (features, noise calibrations):

1. ``fedequity evidence GRID --in-process`` to warm the caches (not reported);
2. every cell as its own fresh ``python -m simulations run`` (``flwr run`` on a private
   SuperLink with Ray), as a sweep of separate runs does — timed;
3. ``fedequity evidence GRID --in-process``, all cells in one process — timed.

Prints cells per hour of both, their ratio (``sweep_cells_per_hour_ratio``) and whether
every cell's reported metrics are identical between 2 and 3; writes
``outputs/bench/sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmarks.harness import (
    REPO,
    check_assignments,
    results_of,
    run_command,
    write_result,
)
from simulations.cli_types import comma_separated
from simulations.evidence import REPORTED, VARIANTS, cell_experiment, load_grid, summary_path
from simulations.experiment import parse_assignments


def write_grid(path: Path, args: argparse.Namespace) -> None:
    variants = ", ".join(f'"{v}"' for v in args.variants.split(","))
    overrides = "\n".join(
        f'"{k}" = {json.dumps(v)}' for k, v in parse_assignments(args.assignments).items()
    )
    path.write_text(
        f'[evidence]\nname = "bench-sweep"\nvariants = [{variants}]\n'
        f"epsilons = [{args.epsilons}]\nseeds = [{args.seeds}]\n\n"
        f'[evidence.overrides]\ndataset = "synthetic"\n{overrides}\n\n'
        "[federation]\nnum-supernodes = 10\nclient-cpus = 1\n"
    )


def evidence(grid: Path, output_dir: Path) -> float:
    """Wall seconds of one in-process evidence sweep of ``grid``."""
    command = [sys.executable, "-m", "simulations", "evidence", str(grid), "--in-process",
               "--output-dir", str(output_dir)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def fresh_runs(grid_path: Path, output_dir: Path) -> tuple[float, dict[str, dict[str, Any]]]:
    """Wall seconds of every cell as its own ``python -m simulations run``, and finals."""
    grid = load_grid(grid_path)
    finals: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for cell in grid.cells:
        experiment = cell_experiment(grid, cell, output_dir / "runs")
        settings = [f"{k}={json.dumps(v)}" for k, v in experiment.overrides.items()
                    if k != "output-dir"]  # fmt: skip
        command = run_command(
            "--supernodes", str(experiment.federation["num-supernodes"]),
            "--output-dir", str(output_dir / "runs"), assignments=settings,
        )  # fmt: skip
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        finals[cell.key] = results_of(done, cell.key)["final"]
    return time.perf_counter() - start, finals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="fedavg,representation+sampling")
    parser.add_argument("--epsilons", type=comma_separated(float, "numbers or inf"), default="4,8")
    parser.add_argument("--seeds", type=comma_separated(int, "whole numbers"), default="1,2,3")
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args(argv)
    check_assignments(parser, args.assignments)
    if unknown := set(args.variants.split(",")) - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(unknown)}; valid: {sorted(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="fedequity-sweep-") as tmp:
        root = Path(tmp)
        os.environ["FEDEQUITY_CACHE"] = str(root / "cache")
        grid_path = root / "grid.toml"
        write_grid(grid_path, args)
        cells = load_grid(grid_path).cells
        evidence(grid_path, root / "warm-up")
        fresh_s, fresh = fresh_runs(grid_path, root / "fresh")
        sweep_s = evidence(grid_path, root / "sweep")
        swept = {c.key: json.loads(summary_path(root / "sweep", c).read_text()) for c in cells}
    identical = all(all(fresh[key].get(m) == swept[key].get(m) for m in REPORTED) for key in fresh)
    result = {
        "cells": len(cells),
        "fresh_cells_per_hour": 3600 * len(cells) / fresh_s,
        "sweep_cells_per_hour": 3600 * len(cells) / sweep_s,
        "sweep_cells_per_hour_ratio": fresh_s / sweep_s,
        "identical_results": identical,
    }
    print(f"{len(cells)} cells: fresh runs {result['fresh_cells_per_hour']:.0f} cells/h, "
          f"sweep runner {result['sweep_cells_per_hour']:.0f} cells/h -> "
          f"{result['sweep_cells_per_hour_ratio']:.2f}x; identical per-cell results: "
          f"{identical}")  # fmt: skip
    write_result("sweep", result)
    return result


if __name__ == "__main__":
    main()
