"""data.group-shares subsampling and the counterfactual flip rate."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from datasets import Dataset

from task.config import load_defaults, parse_group_shares, parse_run_config
from task.data import load_splits, subsample_to_shares
from task.fairness import counterfactual_flip_rate

DEFAULTS = load_defaults()


def train_rows() -> Dataset:
    groups = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    return Dataset.from_dict({"text": [str(i) for i in range(1000)], "group": groups})


def test_subsample_hits_the_shares_and_is_seeded() -> None:
    shares = {"a": 0.6, "b": 0.3, "c": 0.1}
    kept = subsample_to_shares(train_rows(), {"a": 0.2, "b": 0.3, "c": 0.5}, seed=1)
    counts = Counter(kept["group"])
    assert counts == {"a": 40, "b": 60, "c": 100}  # c is the binding group
    again = subsample_to_shares(train_rows(), {"a": 0.2, "b": 0.3, "c": 0.5}, seed=1)
    assert kept["text"] == again["text"]
    assert Counter(subsample_to_shares(train_rows(), shares, seed=0)["group"]) == {
        "a": 600,
        "b": 300,
        "c": 100,
    }


def test_subsample_names_missing_and_unknown_groups() -> None:
    with pytest.raises(ValueError, match=r"data.group-shares.*missing \['c'\], unknown \['d'\]"):
        subsample_to_shares(train_rows(), {"a": 0.5, "b": 0.3, "d": 0.2}, seed=0)


def test_group_shares_leave_the_test_split_untouched() -> None:
    base = parse_run_config(DEFAULTS | {"synthetic.num-examples": 2000}).data
    scarce = replace(
        base, group_shares=parse_group_shares("north=0.4, south=0.3, east=0.2, west=0.1")
    )
    plain, sub = load_splits(base, 0), load_splits(scarce, 0)
    assert sub["test"]["text"] == plain["test"]["text"]
    counts = Counter(sub["train"]["group"])
    total = sum(counts.values())
    assert counts["west"] == 80 and abs(counts["north"] / total - 0.4) < 0.01


@pytest.mark.parametrize("text", ["a=0.5", "a=0.5, a=0.5", "a", "a=x, b=0.5", "a=0, b=1"])
def test_bad_group_shares_name_the_key(text: str) -> None:
    with pytest.raises(ValueError, match="data.group-shares"):
        parse_run_config(DEFAULTS | {"data.group-shares": text})


def test_counterfactual_flip_rate_counts_sets_with_differing_predictions() -> None:
    predictions = [1, 1, 1, 0, 1, 0, 0, 1]
    sets = [7, 7, 7, 8, 8, 9, 9, -1]  # set 8 flips; the -1 row and no singleton count
    assert counterfactual_flip_rate(predictions, sets) == pytest.approx(1 / 3)
    assert counterfactual_flip_rate([1, 0], [1, 2]) is None


def test_tiny_bert_cannot_be_frozen() -> None:
    with pytest.raises(ValueError, match=r"model.finetune.*'tiny-bert' is trained from scratch"):
        parse_run_config(DEFAULTS | {"model.name": "tiny-bert", "model.finetune": "head"})
