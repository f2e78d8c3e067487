"""Where FedEquity keeps what it computes once per machine: tokenizers, features, noise."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

FEATURE_CACHE_LIMIT_ENV = "FEDEQUITY_FEATURE_CACHE_GB"
DEFAULT_FEATURE_CACHE_GB = 10.0
# A staging file this old is a killed writer's, not a live one's: writing any cache entry
# takes seconds.
STALE_STAGING_S = 3600.0


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


def write_synced(path: Path, data: str | bytes, *, append: bool = False) -> None:
    """Write (or append) ``data`` to ``path`` and fsync it before returning."""
    mode = ("a" if append else "w") + ("b" if isinstance(data, bytes) else "")
    with path.open(mode) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_durably(target: Path, data: str | bytes) -> None:
    """:func:`write_atomically` ``data`` with its contents and the rename fsync'd: after a
    kill -9, even a power loss, ``target`` is the previous file or this one, whole."""
    write_atomically(target, lambda staging: write_synced(staging, data))
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


def feature_cache_limit() -> int:
    """The bytes the feature cache may hold: ``FEDEQUITY_FEATURE_CACHE_GB`` (default 10;
    0 for no limit)."""
    text = os.environ.get(FEATURE_CACHE_LIMIT_ENV, "").strip()
    if not text:
        return int(DEFAULT_FEATURE_CACHE_GB * 1e9)
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = math.nan
    if not (math.isfinite(gigabytes) and gigabytes >= 0):
        raise ValueError(
            f"{FEATURE_CACHE_LIMIT_ENV}={text!r}: valid is a number of gigabytes >= 0 "
            f"(0: no limit; unset: {DEFAULT_FEATURE_CACHE_GB:g})"
        )
    return int(gigabytes * 1e9)


def touch(path: Path) -> None:
    """Mark ``path`` as just used, for ``trim``'s least-recently-used order."""
    with contextlib.suppress(OSError):  # read-only, or removed meanwhile: it only ages
        os.utime(path)


def trim(folder: Path, max_bytes: int, *, keep: Path) -> None:
    """Delete ``folder``'s least recently used files until it holds at most ``max_bytes``
    (0: no limit), never ``keep``; and the staging files of writers killed mid-write.

    Another process may be reading a file deleted here: readers of a cache recompute what
    they cannot load.
    """
    now = time.time()
    entries: list[tuple[float, int, Path]] = []
    for path in folder.iterdir():
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        if path.suffix == ".tmp":
            if now - stat.st_mtime > STALE_STAGING_S:
                path.unlink(missing_ok=True)
        else:
            entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if not max_bytes or total <= max_bytes:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size
