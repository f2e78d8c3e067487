"""What the benchmark scripts share: whole ``python -m simulations run`` commands, step
timings side by side, and where their figures go (``outputs/bench/NAME.json``)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from simulations.experiment import parse_assignments
from task.config import RunConfig, load_defaults, parse_run_config

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "outputs" / "bench"
K = TypeVar("K", bound=Hashable)


def check_assignments(
    parser: argparse.ArgumentParser,
    assignments: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The run config of ``--set`` over ``defaults`` (the benchmark's own, then the
    project's); exit with its error for a bad ``--set``, before anything runs (the runs a
    benchmark starts would each fail with it, after its set-up)."""
    try:
        raw = load_defaults() | dict(defaults or {}) | parse_assignments(list(assignments))
        return parse_run_config(raw)
    except ValueError as error:
        parser.error(str(error))


def interleaved_medians(
    steppers: Mapping[K, Callable[[], float]], *, steps: int, warmup: int
) -> dict[K, float]:
    """Median seconds of each stepper, called in turn step by step so that machine noise
    hits all of them alike (``warmup`` rounds first, not counted)."""
    for _ in range(warmup):
        for step in steppers.values():
            step()
    times: dict[K, list[float]] = {name: [] for name in steppers}
    for _ in range(steps):
        for name, step in steppers.items():
            times[name].append(step())
    return {name: statistics.median(samples) for name, samples in times.items()}


def run_command(*options: str, assignments: Iterable[str] = ()) -> list[str]:
    """``python -m simulations run OPTIONS --set A …`` as an argv, run from ``REPO``."""
    command = [sys.executable, "-m", "simulations", "run", *options]
    for assignment in assignments:
        command += ["--set", assignment]
    return command


def run_dir_of(done: subprocess.CompletedProcess[str], what: str) -> Path:
    """The run directory a finished ``run`` command printed as its last line."""
    if done.returncode != 0:
        raise RuntimeError(f"{what}: run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def results_of(done: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    """``results.json`` of the run a finished ``run`` command printed as its last line."""
    results: dict[str, Any] = json.loads((run_dir_of(done, what) / "results.json").read_text())
    return results


def write_result(name: str, data: Any) -> None:
    """Write ``data`` to ``outputs/bench/NAME.json``."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
