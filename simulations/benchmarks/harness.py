"""What the benchmark scripts share: whole ``python -m simulations run`` commands and
where their figures go (``outputs/bench/NAME.json``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "outputs" / "bench"


def run_command(*options: str, assignments: Iterable[str] = ()) -> list[str]:
    """``python -m simulations run OPTIONS --set A …`` as an argv, run from ``REPO``."""
    command = [sys.executable, "-m", "simulations", "run", *options]
    for assignment in assignments:
        command += ["--set", assignment]
    return command


def results_of(done: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    """``results.json`` of the run a finished ``run`` command printed as its last line."""
    if done.returncode != 0:
        raise RuntimeError(f"{what}: run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    results: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    return results


def write_result(name: str, data: Any) -> None:
    """Write ``data`` to ``outputs/bench/NAME.json``."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
