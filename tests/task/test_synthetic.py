from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import DatasetDict

from task import synthetic
from task.synthetic import GROUP_SHARES, MARKERS, group_sizes, load_synthetic


def test_group_sizes_follow_shares_and_sum_to_total() -> None:
    assert group_sizes(6000) == {"north": 3720, "south": 1380, "east": 600, "west": 300}
    assert sum(group_sizes(1001).values()) == 1001


def test_smallest_group_is_about_five_percent_and_shares_differ() -> None:
    shares = sorted(GROUP_SHARES.values())
    assert 3 <= len(shares) <= 5
    assert abs(shares[0] - 0.05) < 0.01
    assert shares[-1] / shares[0] > 10


def test_splits_keep_population_group_shares() -> None:
    splits = load_synthetic(4000, test_fraction=0.25, seed=1)
    assert splits["train"].num_rows == 3000
    assert splits["test"].num_rows == 1000
    test_counts = Counter(splits["test"]["group"])
    assert test_counts == {"north": 620, "south": 230, "east": 100, "west": 50}


def test_deterministic_by_seed() -> None:
    first = load_synthetic(500, test_fraction=0.2, seed=7)
    again = load_synthetic(500, test_fraction=0.2, seed=7)
    other = load_synthetic(500, test_fraction=0.2, seed=8)
    assert list(first["train"]["text"]) == list(again["train"]["text"])
    assert list(first["train"]["text"]) != list(other["train"]["text"])


def test_rows_carry_group_markers_and_binary_labels() -> None:
    train = load_synthetic(1000, test_fraction=0.2, seed=0)["train"]
    assert train.features["label"].names == ["negative", "positive"]
    for text, group in zip(train["text"][:200], train["group"][:200], strict=True):
        assert sum(word in MARKERS[group] for word in text.split()) >= 2
    labels = np.array(train["label"])
    assert 0.35 < labels.mean() < 0.6


def _rows(splits: DatasetDict) -> dict[str, list[dict[str, object]]]:
    return {name: split.to_list() for name, split in splits.items()}


def test_splits_are_kept_on_disk_and_read_back_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDEQUITY_CACHE", str(tmp_path))
    drawn = load_synthetic(600, test_fraction=0.2, seed=3)
    (entry,) = (tmp_path / "synthetic").iterdir()
    monkeypatch.setattr(synthetic, "_draw_splits", _must_not_draw)
    read = load_synthetic(600, test_fraction=0.2, seed=3)
    assert _rows(read) == _rows(drawn)
    assert read["train"].features == drawn["train"].features
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [entry.name]  # no staging


def test_other_arguments_are_other_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDEQUITY_CACHE", str(tmp_path))
    first = load_synthetic(600, test_fraction=0.2, seed=3)
    for other in [(601, 0.2, 3), (600, 0.25, 3), (600, 0.2, 4)]:
        num, fraction, seed = other
        assert _rows(load_synthetic(num, test_fraction=fraction, seed=seed)) != _rows(first)
    assert len(list((tmp_path / "synthetic").iterdir())) == 4


def test_a_damaged_entry_is_drawn_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDEQUITY_CACHE", str(tmp_path))
    drawn = load_synthetic(600, test_fraction=0.2, seed=3)
    (entry,) = (tmp_path / "synthetic").iterdir()
    for arrow in entry.rglob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    assert _rows(load_synthetic(600, test_fraction=0.2, seed=3)) == _rows(drawn)


def _must_not_draw(*_args: object, **_kwargs: object) -> DatasetDict:
    raise AssertionError("drawn again despite the cached entry")
