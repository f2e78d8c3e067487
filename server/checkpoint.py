"""The run's checkpoint: everything the server needs to continue after its last round.

One file, ``<run-dir>/checkpoint.npz``, rewritten after every round atomically (staged,
fsync'd, renamed, directory fsync'd), so a kill -9 at any point leaves either the previous
round's checkpoint or this one, never a torn file. It holds the global arrays (as
``array/<name>``), the reported moving average of them (``average/<name>``) and one JSON
document (``state``): the round, the recorder's rounds and privacy reports, the strategy's
state (with its node sampler's, :mod:`strategies.sampling`) and the central accountant's
history. NumPy's format, read with ``allow_pickle=False``: a checkpoint is
data, never code.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from task.cache import write_durably

FILENAME = "checkpoint.npz"
FORMAT = 1
_ARRAY = "array/"
_AVERAGE = "average/"


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    #: the reported model (:mod:`server.model_average`); None: not kept (ema-decay 0)
    averaged: dict[str, np.ndarray] | None = None


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / FILENAME


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` durably in place of the previous one."""
    document = {"format": FORMAT, "round": checkpoint.round, **checkpoint.state}
    buffer = io.BytesIO()
    entries: dict[str, Any] = {_ARRAY + name: value for name, value in checkpoint.arrays.items()}
    for name, value in (checkpoint.averaged or {}).items():
        entries[_AVERAGE + name] = value
    entries["state"] = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    np.savez(buffer, **entries)
    write_durably(checkpoint_path(run_dir), buffer.getvalue())


def load(run_dir: Path) -> Checkpoint:
    """The run's last checkpoint; a clear error if there is none or it is damaged."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {FILENAME}: it is not a run directory, or its run stopped "
            "before the first round completed (start it anew instead)"
        )
    try:
        with np.load(path, allow_pickle=False) as stored:
            document = json.loads(stored["state"].tobytes().decode())
            arrays = _prefixed(stored, _ARRAY)
            averaged = _prefixed(stored, _AVERAGE) or None
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"checkpoint {path} is unreadable: {error}") from error
    if document.pop("format", None) != FORMAT:
        raise ValueError(f"checkpoint {path} has another format than {FORMAT}")
    return Checkpoint(
        round=int(document.pop("round")), arrays=arrays, state=document, averaged=averaged
    )


def _prefixed(stored: Any, prefix: str) -> dict[str, np.ndarray]:
    return {name[len(prefix) :]: stored[name] for name in stored.files if name.startswith(prefix)}
