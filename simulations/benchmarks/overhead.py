"""What Flower's simulation engine adds to the work: the default experiment, side by side.

    python simulations/benchmarks/overhead.py [--set key=value …]

Runs the default experiment (``simulations/experiments/default.toml``) three times as
whole commands, in one sitting and with one private feature cache:

1. ``--engine in-process`` to warm the cache (not reported),
2. ``flwr run`` on a private SuperLink with Ray (the product),
3. ``--engine in-process`` again: the **compute floor** — the same ServerApp, ClientApp,
   data, DP training and aggregation called in one process, nothing else.

It prints and writes ``outputs/bench/overhead.json``: the steady-state round ratio (median
wall of rounds 2.. of Flower over the floor's), the whole-command ratio, and the fixed cost
(``fixed_cost_s``): from the command's start to round 1's first client call (the earliest
line of :mod:`clients.first_call`, which every ClientApp process logs) plus from the last
aggregation (``results.json`` last written) to the command's exit. ``outside_rounds_s`` is
the command wall minus the summed round walls: it misses the start-up inside round 1 (Ray
and its actors), which ``fixed_cost_s`` counts. Ratios, not seconds, are the result: the
machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from clients.first_call import first_call_time
from simulations.benchmarks.harness import (
    REPO,
    check_assignments,
    run_command,
    run_dir_of,
    write_result,
)

EXPERIMENT = REPO / "simulations" / "experiments" / "default.toml"


def timed_run(engine: str, output_dir: Path, assignments: list[str]) -> dict[str, Any]:
    """One whole ``python -m simulations run`` command: its wall, its round walls, and its
    start-up (to the first client call) and shut-down (from the last aggregation)."""
    command = run_command(str(EXPERIMENT), "--engine", engine, "--output-dir", str(output_dir),
                          assignments=assignments)  # fmt: skip
    start, start_unix = time.perf_counter(), time.time()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall, end_unix = time.perf_counter() - start, time.time()
    run_dir = run_dir_of(done, engine)
    rounds = json.loads((run_dir / "results.json").read_text())["rounds"]
    logs = [done.stdout, done.stderr, *(p.read_text() for p in run_dir.glob("logs/*.log"))]
    first_call = first_call_time(line for text in logs for line in text.splitlines())
    if first_call is None:
        raise RuntimeError(f"{engine}: no ClientApp logged its first call; see {run_dir}")
    return {
        "wall_s": wall,
        "round_wall_s": [float(r["wall_s"]) for r in rounds],
        "startup_s": first_call - start_unix,
        "shutdown_s": end_unix - (run_dir / "results.json").stat().st_mtime,
    }


def ratios(flower: dict[str, Any], floor: dict[str, Any]) -> dict[str, float]:
    """The overhead figures of one Flower run against one floor run."""

    def steady(run: dict[str, Any]) -> float:
        return statistics.median(run["round_wall_s"][1:] or run["round_wall_s"])

    return {
        "overhead_steady_ratio": steady(flower) / steady(floor),
        "overhead_run_ratio": flower["wall_s"] / floor["wall_s"],
        "fixed_cost_s": flower["startup_s"] + flower["shutdown_s"],
        "floor_fixed_cost_s": floor["startup_s"] + floor["shutdown_s"],
        "startup_s": flower["startup_s"],
        "shutdown_s": flower["shutdown_s"],
        "outside_rounds_s": flower["wall_s"] - sum(flower["round_wall_s"]),
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
    check_assignments(parser, args.assignments)
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
        f"fixed cost:   Flower {figures['fixed_cost_s']:.1f} s (start to round 1's first "
        f"client call {figures['startup_s']:.1f} s, last aggregation to exit "
        f"{figures['shutdown_s']:.1f} s), floor {figures['floor_fixed_cost_s']:.1f} s; "
        f"outside the round walls {figures['outside_rounds_s']:.1f} s"
    )
    return figures


if __name__ == "__main__":
    main()
