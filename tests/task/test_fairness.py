"""Tests for task.fairness: hand-worked values, fairlearn agreement, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from task.fairness import client_spread, group_report

CONTRACT_KEYS = {
    "accuracy",
    "balanced_accuracy",
    "loss",
    "per_group",
    "worst_group_accuracy",
    "group_accuracy_gap",
    "demographic_parity_difference",
    "equalized_odds_difference",
}

# 10 rows, 3 groups. Per group (accuracy, selection rate, TPR, FPR):
#   a: y 1100 / p 1000 -> 3/4, 1/4, 1/2, 0
#   b: y 100  / p 100  -> 1,   1/3, 1,   0
#   c: y 110  / p 011  -> 1/3, 2/3, 1/2, 1
GROUPS = list("aaaabbbccc")
Y_TRUE = [1, 1, 0, 0, 1, 0, 0, 1, 1, 0]
Y_PRED = [1, 0, 0, 0, 1, 0, 0, 0, 1, 1]


def test_hand_example_every_key() -> None:
    report = group_report(Y_TRUE, Y_PRED, GROUPS, loss=0.25)
    assert set(report) == CONTRACT_KEYS
    assert report["accuracy"] == pytest.approx(7 / 10)
    assert report["balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 1 / 3) / 3)  # 25/36
    assert report["loss"] == 0.25
    assert report["per_group"] == {
        "a": {"accuracy": pytest.approx(3 / 4), "n": 4},
        "b": {"accuracy": pytest.approx(1.0), "n": 3},
        "c": {"accuracy": pytest.approx(1 / 3), "n": 3},
    }
    assert report["worst_group_accuracy"] == pytest.approx(1 / 3)
    assert report["group_accuracy_gap"] == pytest.approx(1 - 1 / 3)
    assert report["demographic_parity_difference"] == pytest.approx(2 / 3 - 1 / 4)
    # TPR gap 1/2, FPR gap 1: the worse of the two.
    assert report["equalized_odds_difference"] == pytest.approx(1.0)


def test_hand_example_matches_fairlearn() -> None:
    report = group_report(Y_TRUE, Y_PRED, GROUPS)
    kw = {"sensitive_features": GROUPS, "method": "between_groups"}
    assert report["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(Y_TRUE, Y_PRED, **kw)
    )
    assert report["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(Y_TRUE, Y_PRED, **kw)
    )


def test_values_are_plain_python_and_json_serialisable() -> None:
    report = group_report(np.array(Y_TRUE), np.array(Y_PRED), np.array(GROUPS))
    for key in CONTRACT_KEYS - {"per_group", "loss"}:
        assert type(report[key]) is float, key
    for name, entry in report["per_group"].items():
        assert type(name) is str
        assert type(entry["accuracy"]) is float and type(entry["n"]) is int
    assert report["loss"] is None
    assert json.loads(json.dumps(report)) == report


def test_group_without_positives_mirrors_fairlearn_zero_tpr() -> None:
    # a: no true positives (TPR taken as 0, FPR 1/3); b: TPR 1/2, FPR 0;
    # c: no true negatives (TPR 1, FPR taken as 0). TPR gap 1 - 0 = 1.
    y_true = [0, 0, 0, 1, 1, 0, 1, 1]
    y_pred = [0, 1, 0, 1, 0, 0, 1, 1]
    groups = list("aaabbbcc")
    report = group_report(y_true, y_pred, groups)
    assert report["equalized_odds_difference"] == pytest.approx(1.0)
    assert report["demographic_parity_difference"] == pytest.approx(1 - 1 / 3)
    assert report["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
    )


def test_single_group_has_zero_gaps() -> None:
    report = group_report([1, 0, 1, 1], [1, 1, 0, 1], ["only"] * 4)
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["balanced_accuracy"] == pytest.approx(0.5)
    assert report["worst_group_accuracy"] == pytest.approx(0.5)
    assert report["group_accuracy_gap"] == 0.0
    assert report["demographic_parity_difference"] == 0.0
    assert report["equalized_odds_difference"] == 0.0


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    n_groups = int(rng.integers(1, 6))
    n_rows = int(rng.integers(n_groups, 120))
    shares = rng.dirichlet(np.full(n_groups, 0.5))  # often very imbalanced
    groups = [f"g{i}" for i in rng.choice(n_groups, size=n_rows, p=shares)]
    prevalence = rng.uniform(0.05, 0.95)
    y_true = (rng.random(n_rows) < prevalence).astype(np.int64)
    flip = rng.random(n_rows) < rng.uniform(0.0, 0.5)
    y_pred = np.where(flip, 1 - y_true, y_true)
    return y_true, y_pred, groups


def test_binary_matches_fairlearn_on_random_inputs() -> None:
    rng = np.random.default_rng(20240601)
    degenerate = 0
    for _ in range(60):
        y_true, y_pred, groups = _random_case(rng)
        report = group_report(y_true, y_pred, groups)
        kw = {"sensitive_features": groups, "method": "between_groups"}
        expected_dp = demographic_parity_difference(y_true, y_pred, **kw)
        expected_eo = equalized_odds_difference(y_true, y_pred, **kw)
        assert report["demographic_parity_difference"] == pytest.approx(expected_dp, abs=1e-12)
        assert report["equalized_odds_difference"] == pytest.approx(expected_eo, abs=1e-12)
        g = np.asarray(groups)
        degenerate += any(np.unique(y_true[g == name]).size < 2 for name in set(groups))
    # The loop must exercise groups lacking a true class, where fairlearn's 0/0 -> 0 matters.
    assert degenerate >= 5


def test_binary_positive_label_zero_is_symmetric_without_degenerate_groups() -> None:
    # Every group has both true classes, so the class-0 gaps equal the class-1 gaps.
    one = group_report(Y_TRUE, Y_PRED, GROUPS, positive_label=1)
    zero = group_report(Y_TRUE, Y_PRED, GROUPS, positive_label=0)
    assert zero["demographic_parity_difference"] == pytest.approx(
        one["demographic_parity_difference"]
    )
    assert zero["equalized_odds_difference"] == pytest.approx(one["equalized_odds_difference"])


def test_positive_label_decides_which_class_the_binary_rates_are_of() -> None:
    """Group a has no true 0: with 0 as the positive class its TPR is 0/0, read as 0 by
    fairlearn, against b's 1, so EO is 1; with 1 as positive both TPRs are 1 and EO is 0."""
    y_true = y_pred = [0, 1, 1, 1]
    groups = list("bbba")
    assert (
        group_report(y_true, y_pred, groups, positive_label=1)["equalized_odds_difference"] == 0.0
    )
    flipped = group_report(y_true, y_pred, groups, positive_label=0)
    assert flipped["equalized_odds_difference"] == 1.0
    assert flipped["equalized_odds_difference"] == equalized_odds_difference(
        [1 - v for v in y_true], [1 - v for v in y_pred], sensitive_features=groups
    )


def test_multiclass_takes_max_over_one_vs_rest_classes() -> None:
    # Group a is perfect; group b predicts class 2 for everything.
    # Selection rates a/b: class 0 1/3 vs 0, class 1 1/3 vs 0, class 2 1/3 vs 1 -> DP 2/3
    # (mean over classes would be 4/9; class 1 alone 1/3).
    # TPR gaps: class 0 1, class 1 1, class 2 0; FPR gap class 2: 0 vs 1 -> EO 1.
    y_true = [0, 1, 2, 0, 1, 2]
    y_pred = [0, 1, 2, 2, 2, 2]
    groups = list("aaabbb")
    report = group_report(y_true, y_pred, groups)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_group"]["b"] == {"accuracy": pytest.approx(1 / 3), "n": 3}
    assert report["demographic_parity_difference"] == pytest.approx(2 / 3)
    assert report["equalized_odds_difference"] == pytest.approx(1.0)
    # positive_label plays no part once there are more than two classes.
    assert group_report(y_true, y_pred, groups, positive_label=0) == report


def test_multiclass_max_over_classes_and_over_tpr_fpr() -> None:
    # Group a is perfect; group b predicts 2 for one of its two true-0 rows.
    # Class 0: TPR a 1 vs b 1/2 (gap 1/2); class 2: FPR a 0 vs b 1/3 -> EO 1/2.
    y_true = [0, 1, 2, 0, 0, 1, 2]
    y_pred = [0, 1, 2, 0, 2, 1, 2]
    groups = list("aaabbbb")
    report = group_report(y_true, y_pred, groups)
    assert report["equalized_odds_difference"] == pytest.approx(1 / 2)
    # Selection of class 0: a 1/3, b 1/4; class 2: a 1/3, b 1/2 -> DP 1/6.
    assert report["demographic_parity_difference"] == pytest.approx(1 / 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_true": [1, 0], "y_pred": [1], "groups": ["a", "b"]}, "y_pred has 1"),
        ({"y_true": [1, 0], "y_pred": [1, 0], "groups": ["a"]}, "groups has 1"),
        ({"y_true": [], "y_pred": [], "groups": []}, "y_true must be a non-empty"),
        ({"y_true": [[1, 0]], "y_pred": [[1, 0]], "groups": ["a"]}, "y_true must be"),
        ({"y_true": [0.5, 1.0], "y_pred": [1, 0], "groups": ["a", "b"]}, "integer class ids"),
        ({"y_true": [1, 0], "y_pred": ["x", "y"], "groups": ["a", "b"]}, "y_pred must hold"),
        ({"y_true": [1, 0], "y_pred": [1, 0], "groups": [1, 2]}, "only str group names"),
        ({"y_true": [1, 0], "y_pred": [1, 0], "groups": "ab"}, "not a single string"),
        ({"y_true": [1], "y_pred": [1], "groups": ["a"], "loss": "x"}, "loss must be"),
        ({"y_true": [1], "y_pred": [1], "groups": ["a"], "positive_label": 1.0}, "positive_label"),
    ],
)
def test_group_report_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_report(**kwargs)


def test_client_spread_ten_clients_worst_is_lowest() -> None:
    spread = client_spread([0.5] * 9 + [0.1])
    assert spread["mean_accuracy"] == pytest.approx(0.46)
    # Population std: sqrt((9 * 0.04**2 + 0.36**2) / 10) = 0.12 (ddof=1 would be ~0.1265).
    assert spread["std_accuracy"] == pytest.approx(0.12)
    assert spread["worst10_accuracy"] == pytest.approx(0.1)
    assert all(type(v) is float for v in spread.values())


def test_client_spread_twenty_five_clients_worst_is_mean_of_lowest_two() -> None:
    accuracies = [0.04 * i for i in range(1, 26)]
    rng = np.random.default_rng(0)
    spread = client_spread(list(rng.permutation(accuracies)))
    assert spread["mean_accuracy"] == pytest.approx(0.52)
    assert spread["worst10_accuracy"] == pytest.approx((0.04 + 0.08) / 2)


@pytest.mark.parametrize(("n", "expected"), [(1, 0.3), (5, 0.3), (19, 0.3), (20, 0.35)])
def test_client_spread_at_least_one_client(n: int, expected: float) -> None:
    accuracies = [0.3, 0.4] + [0.9] * (n - 2) if n >= 2 else [0.3]
    assert client_spread(accuracies)["worst10_accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize("bad", [[], [[0.5, 0.6]], [0.5, math.nan], [0.5, math.inf], [1.5], [-0.1]])
def test_client_spread_rejects_bad_input(bad: list) -> None:
    with pytest.raises(ValueError, match="accuracies must be"):
        client_spread(bad)
