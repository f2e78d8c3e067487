"""The feature cache's size limit: least recently used files go first, killed writers'
staging files are swept, and a bad limit is one clear error."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from task.cache import STALE_STAGING_S, feature_cache_limit, touch, trim


def _file(folder: Path, name: str, size: int, age_s: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_trim_deletes_least_recently_used_first_and_never_the_kept_file(tmp_path: Path) -> None:
    oldest = _file(tmp_path, "a.pt", 100, age_s=300)
    middle = _file(tmp_path, "b.pt", 100, age_s=200)
    newest = _file(tmp_path, "c.pt", 100, age_s=100)
    kept = _file(tmp_path, "d.pt", 100, age_s=400)  # oldest of all, but just written
    trim(tmp_path, 250, keep=kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "d.pt"]
    assert not oldest.exists() and not middle.exists() and newest.exists()


def test_a_touched_file_counts_as_recently_used(tmp_path: Path) -> None:
    used = _file(tmp_path, "a.pt", 100, age_s=300)
    _file(tmp_path, "b.pt", 100, age_s=200)
    touch(used)
    trim(tmp_path, 150, keep=tmp_path / "none")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_no_limit_keeps_everything_but_stale_staging_files(tmp_path: Path) -> None:
    _file(tmp_path, "a.pt", 100, age_s=10**6)
    _file(tmp_path, "killed.tmp", 100, age_s=STALE_STAGING_S + 60)
    _file(tmp_path, "writing.tmp", 100, age_s=1)
    trim(tmp_path, 0, keep=tmp_path / "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "writing.tmp"]


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf"])
def test_a_bad_limit_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FEDEQUITY_FEATURE_CACHE_GB", value)
    with pytest.raises(ValueError, match=r"FEDEQUITY_FEATURE_CACHE_GB=.*number of gigabytes"):
        feature_cache_limit()


def test_limit_is_read_in_gigabytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDEQUITY_FEATURE_CACHE_GB", "0.5")
    assert feature_cache_limit() == 500_000_000
    monkeypatch.delenv("FEDEQUITY_FEATURE_CACHE_GB")
    assert feature_cache_limit() == 10_000_000_000
