"""Where FedEquity keeps what it computes once per machine: tokenizers, features, noise."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``FEDEQUITY_CACHE``, else ``~/.cache/fedequity``."""
    default = Path.home() / ".cache" / "fedequity"
    return Path(os.environ.get("FEDEQUITY_CACHE", default))


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a staging file next to ``target``, then rename it into place.

    Readers never see a partial file, and concurrent writers of the same cache entry
    (Ray workers, sweep cells) write identical contents, so the last rename wins safely.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(handle)
    try:
        write(Path(staging))
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
