"""What Flower's simulation engine adds to the work: the default experiment, side by side.

    python simulations/benchmarks/overhead.py [--set key=value …]

Runs the default experiment (``simulations/experiments/default.toml``) three times as
whole commands, in one sitting and with one private feature cache:

1. ``--engine in-process`` to warm the cache (not reported),
2. ``flwr run`` on a private SuperLink with Ray (the product),
3. ``--engine in-process`` again: the **compute floor** — the same ServerApp, ClientApp,
   data, DP training and aggregation called in one process, nothing else.

It prints and writes ``outputs/bench/overhead.json``: the steady-state round ratio (median
wall of rounds 2.. of Flower over the floor's), the whole-command ratio, and Flower's fixed
cost (command wall minus the summed round walls: start-up before round 1 plus shut-down).
Ratios, not seconds, are the result: the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmarks.harness import REPO, results_of, run_command, write_result

EXPERIMENT = REPO / "simulations" / "experiments" / "default.toml"


def timed_run(engine: str, output_dir: Path, assignments: list[str]) -> dict[str, Any]:
    """One whole ``python -m simulations run`` command: its wall and its round walls."""
    command = run_command(str(EXPERIMENT), "--engine", engine, "--output-dir", str(output_dir),
                          assignments=assignments)  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    rounds = results_of(done, engine)["rounds"]
    return {"wall_s": wall, "round_wall_s": [float(r["wall_s"]) for r in rounds]}


def ratios(flower: dict[str, Any], floor: dict[str, Any]) -> dict[str, float]:
    """The overhead figures of one Flower run against one floor run."""

    def steady(run: dict[str, Any]) -> float:
        return statistics.median(run["round_wall_s"][1:] or run["round_wall_s"])

    return {
        "overhead_steady_ratio": steady(flower) / steady(floor),
        "overhead_run_ratio": flower["wall_s"] / floor["wall_s"],
        "fixed_cost_s": flower["wall_s"] - sum(flower["round_wall_s"]),
        "floor_fixed_cost_s": floor["wall_s"] - sum(floor["round_wall_s"]),
        "flower_steady_round_s": steady(flower),
        "floor_steady_round_s": steady(floor),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
        help="override a run-config key in all three runs",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedequity-overhead-") as tmp:
        os.environ["FEDEQUITY_CACHE"] = str(Path(tmp) / "cache")  # the children inherit it
        timed_run("in-process", Path(tmp) / "warm-up", args.assignments)
        flower = timed_run("flower", Path(tmp) / "flower", args.assignments)
        floor = timed_run("in-process", Path(tmp) / "floor", args.assignments)
    figures = ratios(flower, floor)
    write_result("overhead", figures | {"flower": flower, "floor": floor, "set": args.assignments})
    print(
        f"steady round: Flower {figures['flower_steady_round_s']:.2f} s, floor "
        f"{figures['floor_steady_round_s']:.2f} s -> {figures['overhead_steady_ratio']:.2f}x"
    )
    print(
        f"whole run:    Flower {flower['wall_s']:.1f} s, floor {floor['wall_s']:.1f} s "
        f"-> {figures['overhead_run_ratio']:.2f}x"
    )
    print(
        f"fixed cost:   Flower {figures['fixed_cost_s']:.1f} s, "
        f"floor {figures['floor_fixed_cost_s']:.1f} s"
    )
    return figures


if __name__ == "__main__":
    main()
