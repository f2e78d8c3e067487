"""Tests for task.privacy_plan: the planned history and the calibrated noise multiplier."""

from __future__ import annotations

import json
import math
import re

import pytest

import task.privacy_plan as privacy_plan
from task.accounting import PrivacyLedger
from task.privacy_plan import PrivacyPlan, calibrate_noise_multiplier

DELTA = 1e-5


def _plan(**overrides: object) -> PrivacyPlan:
    fields: dict = dict(
        target_epsilon=4.0,
        delta=DELTA,
        sample_rate=0.05,
        steps_per_round=20,
        planned_rounds=5,
        accountant="rdp",
        stats_noise=0.0,
    )
    fields.update(overrides)
    return PrivacyPlan(**fields)


@pytest.mark.parametrize(("accountant", "stats_noise"), [("rdp", 0.0), ("rdp", 4.0), ("prv", 4.0)])
def test_calibration_spends_the_whole_budget_not_more(accountant: str, stats_noise: float) -> None:
    plan = _plan(accountant=accountant, stats_noise=stats_noise)
    sigma = calibrate_noise_multiplier(plan)
    ledger = PrivacyLedger(accountant=accountant)
    for _ in range(plan.planned_rounds):  # the real per-round history, not the grouped plan
        ledger.record(plan.round_events(sigma))
    eps = ledger.epsilon(plan.delta)
    assert plan.target_epsilon - privacy_plan.EPSILON_TOLERANCE <= eps <= plan.target_epsilon
    assert len(ledger.history) == (2 if stats_noise else 1) * plan.planned_rounds


def test_releases_force_more_training_noise() -> None:
    without = calibrate_noise_multiplier(_plan(stats_noise=0.0))
    with_release = calibrate_noise_multiplier(_plan(stats_noise=4.0))
    assert with_release > without


def test_calibration_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = privacy_plan.epsilon_of

    def counting(*args: object, **kwargs: object) -> float:
        calls["n"] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(privacy_plan, "epsilon_of", counting)
    calibrate_noise_multiplier.cache_clear()
    plan = _plan(target_epsilon=3.0, stats_noise=5.0)
    first = calibrate_noise_multiplier(plan)
    after_first = calls["n"]
    assert after_first > 3
    assert calibrate_noise_multiplier(_plan(target_epsilon=3.0, stats_noise=5.0)) == first
    assert calls["n"] == after_first


def test_release_alone_over_budget_names_stats_noise() -> None:
    with pytest.raises(ValueError, match=r"dp\.stats-noise"):
        calibrate_noise_multiplier(_plan(target_epsilon=1.0, stats_noise=1.0))


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("target_epsilon", 0.0, "dp.target-epsilon"),
        ("target_epsilon", math.inf, "dp.target-epsilon"),
        ("delta", 1.5, "dp.delta"),
        ("accountant", "gdp", "dp.accountant"),
        ("stats_noise", -1.0, "dp.stats-noise"),
        ("sample_rate", 0.0, "sample_rate"),
        ("steps_per_round", 0, "steps_per_round"),
        ("planned_rounds", True, "planned_rounds"),
    ],
)
def test_plan_validation_names_the_key(field: str, value: object, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)):
        _plan(**{field: value})


def test_plan_without_release_plans_no_release() -> None:
    plan = _plan(stats_noise=0.0)
    assert not plan.releases_counts
    assert plan.round_events(1.5) == [(1.5, 0.05, 20)]
    assert plan.planned_history(1.5) == [(1.5, 0.05, 100)]
    assert _plan(stats_noise=2.0).planned_history(1.5) == [(1.5, 0.05, 100), (2.0, 1.0, 5)]


def test_a_calibration_is_stored_on_disk_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(target_epsilon=3.3, stats_noise=5.0)
    sigma = calibrate_noise_multiplier(plan)
    calibrate_noise_multiplier.cache_clear()  # as a new process would start

    def no_bisection(_: PrivacyPlan) -> float:
        raise AssertionError("bisected again")

    monkeypatch.setattr(privacy_plan, "_bisect_noise_multiplier", no_bisection)
    assert calibrate_noise_multiplier(plan) == sigma


def test_a_stored_calibration_that_overspends_is_recomputed_not_trusted() -> None:
    plan = _plan(target_epsilon=2.7)
    sigma = calibrate_noise_multiplier(plan)
    calibrate_noise_multiplier.cache_clear()
    stored = privacy_plan.cache_root() / "noise" / f"{privacy_plan._plan_key(plan)}.json"
    stored.write_text(json.dumps({"sigma": sigma / 2}))  # would spend far more than 2.7
    assert calibrate_noise_multiplier(plan) == sigma
    assert json.loads(stored.read_text())["sigma"] == sigma
