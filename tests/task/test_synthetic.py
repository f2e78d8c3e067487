from __future__ import annotations

from collections import Counter

import numpy as np

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
