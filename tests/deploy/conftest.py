"""Shared helpers for the deployment tests: leak detection and the deploy skip switch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

SKIP_DEPLOY = os.environ.get("FEDEQUITY_SKIP_DEPLOY") == "1"
skip_deploy = pytest.mark.skipif(SKIP_DEPLOY, reason="FEDEQUITY_SKIP_DEPLOY=1")


def processes_using(path: Path) -> list[str]:
    """Live processes whose environment or command line mentions ``path``.

    Every Flower process a deployment starts inherits ``FLWR_HOME`` under its work folder,
    including the SuperExecs and app processes Flower detaches into new sessions.
    """
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            blobs = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if state not in {"Z", "X"} and needle in blobs:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
    return found


def assert_no_processes(path: Path, wait: float = 5.0) -> None:
    """Fail if any process tied to ``path`` is still alive after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while (left := processes_using(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"processes left behind: {left}"
