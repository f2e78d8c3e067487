"""The environment of every Flower process: offline, no telemetry, project-local state.

:data:`OFFLINE_ENV` is the one definition. The Makefile, ``docker/Dockerfile`` (and
``tests/conftest.py``, which imports it) must agree with it; ``tests/launch/test_env.py``
checks that they do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

OFFLINE_ENV = {
    # Without this, `flwr run` makes the SuperLink `uv sync` the app: a 5 GB CUDA torch.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",  # else every Flower process asks the network
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}
# Dropped again when the user names a hub model or dataset (FEDEQUITY_ONLINE=1).
HUB_OFFLINE_KEYS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROCESS_ENV = {"TOKENIZERS_PARALLELISM": "false"}
SIMULATION_ENV = {
    "RAY_DEDUP_LOGS": "0",
    # The SuperLink's SuperExec looks for a new run every second by default: a run waited
    # 0.5 s on average before its simulation process started. A poll of the local SuperLink.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
}
DEPLOYMENT_ENV = {"PYTHONUNBUFFERED": "1"}
BIN = Path(sys.executable).parent


def online() -> bool:
    """True if the user allowed Hugging Face downloads (``FEDEQUITY_ONLINE=1``)."""
    return os.environ.get("FEDEQUITY_ONLINE") == "1"


def tool(name: str) -> str:
    """A Flower executable next to this interpreter (the venv), else the bare name."""
    candidate = BIN / name
    return str(candidate) if candidate.exists() else name


def flower_env(
    flwr_home: Path, *, extra: Mapping[str, str] | None = None, drop: Iterable[str] = ()
) -> dict[str, str]:
    """``os.environ`` without ``drop``, plus :data:`OFFLINE_ENV`, :data:`PROCESS_ENV`,
    ``extra``, ``FLWR_HOME`` and this venv first on ``PATH``."""
    dropped = set(drop)
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(OFFLINE_ENV)
    env.update(PROCESS_ENV)
    env.update(extra or {})
    env["FLWR_HOME"] = str(flwr_home)
    # Flower starts its helpers (flower-superexec, flwr-serverapp) by name, from PATH.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    if online():  # the user named a hub model/dataset
        for key in HUB_OFFLINE_KEYS:
            env.pop(key, None)
    return env


def simulation_env(flwr_home: Path) -> dict[str, str]:
    """For a simulation SuperLink: keeps ``RAY_ADDRESS`` (an existing Ray cluster)."""
    return flower_env(flwr_home, extra=SIMULATION_ENV)


def deployment_env(flwr_home: Path) -> dict[str, str]:
    """For deployed SuperLink/SuperNodes/SuperExecs: unbuffered logs, no Ray cluster."""
    return flower_env(flwr_home, extra=DEPLOYMENT_ENV, drop=("RAY_ADDRESS",))
