"""Test-wide environment: offline, no telemetry, a private tokenizer cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launch.env import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

for _key, _value in OFFLINE_ENV.items():  # the one definition, in launch/env.py
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session", autouse=True)
def _tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["FEDEQUITY_CACHE"] = str(tmp_path_factory.mktemp("fedequity-cache"))
