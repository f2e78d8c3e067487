"""The run directory of the results contract: config.json, results.json, rounds.csv, latest."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null so any reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data (what :func:`write_json` writes)."""
    return json.loads(json.dumps(_finite(value)))


def write_json(path: Path, payload: Any) -> None:
    """Write atomically: a crash mid-write never leaves a truncated file behind."""
    staging = path.with_suffix(path.suffix + ".tmp")
    staging.write_text(json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n")
    os.replace(staging, path)


def flat_row(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """One CSV row: nested dicts become dotted columns (``global.per_group.west.accuracy``)."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            row.update(flat_row(value, f"{name}."))
        elif not isinstance(value, list):
            row[name] = value
    return row


class RunDirectory:
    """Owns ``<output-dir>/<run-id>/``; refuses to reuse a directory that already exists."""

    def __init__(self, output_dir: str | Path, run_id: str, config: Mapping[str, Any]) -> None:
        self.root = Path(output_dir).expanduser().resolve()
        self.path = self.root / run_id
        if self.path.exists():
            raise FileExistsError(
                f"run directory {self.path} already exists; refusing to overwrite it "
                "(choose another 'output-dir' or remove it)"
            )
        self.path.mkdir(parents=True)
        self.config = dict(config)
        write_json(self.path / "config.json", self.config)
        self._rows: list[dict[str, Any]] = []

    @classmethod
    def reopen(cls, path: str | Path, rounds: list[dict[str, Any]]) -> RunDirectory:
        """The existing run directory ``path`` (a resumed run), its ``rounds.csv`` rows
        those of ``rounds``; its ``config.json`` stays as written."""
        self = cls.__new__(cls)
        self.path = Path(path).expanduser().resolve()
        self.root = self.path.parent
        self.config = json.loads((self.path / "config.json").read_text())
        self._rows = [flat_row(record) for record in rounds]
        return self

    def point_latest(self) -> None:
        """``<output-dir>/latest`` -> this run: done once it completed, so that a failed or
        interrupted run never hides the last complete one."""
        latest = self.root / "latest"
        staging = self.root / f".latest-{self.path.name}"
        staging.unlink(missing_ok=True)
        staging.symlink_to(self.path.name)
        os.replace(staging, latest)

    def write_results(self, results: Mapping[str, Any]) -> None:
        write_json(self.path / "results.json", results)

    def append_round(self, record: Mapping[str, Any]) -> None:
        """Rewrite ``rounds.csv`` with every round so far (rows are few), atomically.

        A later round can bring new columns (``weights.<node>`` of a node not sampled
        before, ``clients.*`` once clients evaluate): the header is the union, in order
        of first appearance, and a row lacking a column leaves its cell empty.
        """
        self._rows.append(flat_row(record))
        columns = list(dict.fromkeys(name for row in self._rows for name in row))
        path = self.path / "rounds.csv"
        staging = path.with_suffix(".csv.tmp")
        with staging.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(staging, path)


def rounds_without_survivors(
    rounds: Sequence[Mapping[str, Any]], config: Mapping[str, Any]
) -> list[int]:
    """Rounds that ended without an aggregate because clients failed, unless the run
    injected faults (then such a round is a result): a run with any such round failed.

    A round the strategy skipped although some replies were accepted (``skipped``: fewer
    than ``min-clients``, or central DP's wrapper refusing a round with an error reply) is
    reported and the run goes on. A run none of whose rounds aggregated anything (every
    reply failed, was skipped or rejected) failed in every round."""
    if injects_faults(config):
        return []
    if rounds and all(r["num_clients"] == 0 for r in rounds):
        return [int(r["round"]) for r in rounds]
    lost = [r for r in rounds if r["num_clients"] == 0 and r["failures"] > 0]
    return [int(r["round"]) for r in lost if not r.get("skipped")]


def injects_faults(config: Mapping[str, Any]) -> bool:
    """Did the run ask for client faults (then a round without survivors is a result)?"""
    return any(
        config.get(f"faults.{name}-rate", 0) > 0 for name in ("crash", "timeout", "nan", "garbage")
    )


def results_version(run_dir: Path) -> tuple[int, int] | None:
    """``results.json``'s mtime and size (None: there is none): a resumed run whose attempt
    failed before writing it is left as it was, not marked by that attempt."""
    try:
        stat = (run_dir / "results.json").stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def mark_stopped(
    run_dir: Path, error: BaseException, *, unless_unchanged: tuple[int, int] | None = None
) -> None:
    """Mark a run that ended with ``error``: ``failed``, or ``interrupted`` by a signal;
    left as it was where ``results.json`` still has the :func:`results_version`
    ``unless_unchanged`` (a resume attempt that stopped before writing it)."""
    if unless_unchanged is not None and results_version(run_dir) == unless_unchanged:
        return
    mark_status(run_dir, "failed" if isinstance(error, Exception) else "interrupted")


def mark_status(run_dir: Path, status: str) -> None:
    """Record in ``results.json`` how a run ended early (``failed``, ``interrupted``).

    A complete run stays complete (a stop that lands after its last round). A run stopped
    before its first round wrote ``results.json`` gets one with no rounds."""
    path = run_dir / "results.json"
    if path.is_file():
        results = json.loads(path.read_text())
        if results.get("status") == "complete":
            return
    else:
        config_file = run_dir / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        results = {"config": config, "rounds": [], "privacy": {}, "final": {"max_epsilon": None}}
    results["status"] = status
    write_json(path, results)
