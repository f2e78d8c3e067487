"""What the ServerApp and the local launcher (``simulations run``) tell each other.

Two signals, each cutting seconds of waiting out of every run:

- **Start gate.** The launcher validates an experiment (model, data, budgets: seconds of
  imports) *while* Flower starts, instead of before. A ServerApp started with
  :data:`GATE_ENV` set waits at :func:`wait_at_gate` before it writes anything, until the
  launcher's verdict is in the gate file: ``go``, or ``stop`` (the input was bad; the
  launcher reports why and stops every process).
- **Run complete.** After the last round is written, the ServerApp logs
  :func:`complete_line`; the launcher then stops the processes at once instead of waiting
  ~4 s for Flower's own goodbye (worker queues timing out, ``ray.shutdown``, a hard-coded
  1-s log flush), which would write nothing the run keeps.

Without :data:`GATE_ENV` (the in-process engine, a sweep, a deployment) there is no gate.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

GATE_ENV = "FEDEQUITY_START_GATE"
GO, STOP = "go", "stop"
GATE_POLL_S = 0.02
GATE_TIMEOUT_S = 600.0
RUN_COMPLETE = "fedequity run complete:"
WAITING = "waiting for the launcher's validation at"


class GateClosed(RuntimeError):
    """The launcher found the experiment invalid, or never gave its verdict."""


def open_gate(path: Path, *, go: bool) -> None:
    """Write the launcher's verdict atomically (a reader never sees half of it)."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(GO if go else STOP)
    os.replace(staging, path)


def wait_at_gate(timeout: float = GATE_TIMEOUT_S) -> None:
    """Return once the launcher says ``go``; raise :class:`GateClosed` on ``stop`` or after
    ``timeout`` seconds. Returns at once when no launcher set a gate."""
    gate = os.environ.get(GATE_ENV)
    if not gate:
        return
    # Flower's logger (``flwr.common.logger.log``), without importing Flower in the launcher
    logging.getLogger("flwr").info("%s %s", WAITING, gate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            verdict = Path(gate).read_text()
        except FileNotFoundError:
            time.sleep(GATE_POLL_S)
            continue
        if verdict == GO:
            return
        raise GateClosed(f"the launcher refused the experiment ({gate}: {verdict!r})")
    raise GateClosed(f"no verdict in {gate} within {timeout:.0f} s")


def complete_line(run_dir: Path) -> str:
    """The log line that says every round of the run in ``run_dir`` is written."""
    return f"{RUN_COMPLETE} {run_dir}"


def says_complete(line: str) -> bool:
    """Is ``line`` (of ``flwr run``'s stream) the ServerApp's :func:`complete_line`?"""
    return RUN_COMPLETE in line
