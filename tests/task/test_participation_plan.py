"""Budgets planned for how often a client is really sampled (partial participation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import binom

from task.accounting import PrivacyLedger
from task.config import load_defaults, parse_run_config
from task.privacy_plan import (
    EPSILON_TOLERANCE,
    binomial_quantile,
    calibrate_noise_multiplier,
    exhaustion_share,
    plan_for,
    planned_participations,
)


def _cfg(**overrides: object):  # type: ignore[no-untyped-def]
    return parse_run_config(load_defaults() | overrides)


@pytest.mark.parametrize(
    ("trials", "rate", "quantile"),
    [(100, 0.1, 0.999), (100, 0.1, 0.5), (8, 0.5, 0.9), (1000, 0.01, 0.999), (30, 0.97, 0.99)],
)
def test_binomial_quantile_is_scipys(trials: int, rate: float, quantile: float) -> None:
    assert binomial_quantile(trials, rate, quantile) == int(binom.ppf(quantile, trials, rate))


def test_the_plans_sigma_is_the_accountants_sigma_at_the_binomial_quantile() -> None:
    cfg = _cfg(**{"num-server-rounds": 100, "fraction-train": 0.1, "dp.target-epsilon": 8.0})
    planned = int(binom.ppf(0.999, 100, 0.1))
    plan = plan_for(cfg, num_examples=500)
    assert plan.planned_rounds == planned == planned_participations(cfg)
    sigma = calibrate_noise_multiplier(plan)
    ledger = PrivacyLedger(accountant="rdp")
    for _ in range(planned):  # the accountant over the quantile's participations, one by one
        ledger.record(plan.round_events(sigma))
    assert 8.0 - EPSILON_TOLERANCE <= ledger.epsilon(plan.delta) <= 8.0
    mean_plan = dataclasses.replace(plan, planned_rounds=10)  # the expected count
    assert sigma > calibrate_noise_multiplier(mean_plan)


def test_exhaustion_is_computed_for_thousands_of_rounds() -> None:
    cfg = _cfg(**{"num-server-rounds": 3000, "fraction-train": 0.1})
    assert exhaustion_share(cfg) == pytest.approx(
        binom.sf(planned_participations(cfg), 3000, 0.1), abs=1e-9
    )


def test_under_one_percent_of_a_thousand_clients_exhaust_at_the_default_quantile() -> None:
    cfg = _cfg(**{"num-server-rounds": 100, "fraction-train": 0.1})
    rng = np.random.default_rng(0)
    sampled = np.zeros(1000, dtype=int)
    for _ in range(100):  # what the strategy does: 100 of 1,000 each round, uniformly
        sampled[rng.choice(1000, size=100, replace=False)] += 1
    exhausted = float((sampled > planned_participations(cfg)).mean())
    assert exhausted < 0.01
    assert exhaustion_share(cfg) < 0.01
    assert exhaustion_share(cfg) == pytest.approx(binom.sf(planned_participations(cfg), 100, 0.1))


def test_full_participation_plans_every_round_and_an_explicit_count_wins() -> None:
    assert planned_participations(_cfg(**{"num-server-rounds": 8})) == 8
    assert exhaustion_share(_cfg(**{"num-server-rounds": 8})) == 0.0
    explicit = _cfg(**{"num-server-rounds": 100, "fraction-train": 0.1,
                       "dp.planned-participations": 12})  # fmt: skip
    assert planned_participations(explicit) == 12


def test_planning_more_participations_than_rounds_is_refused() -> None:
    with pytest.raises(
        ValueError, match="'dp.planned-participations': 9 exceeds num-server-rounds=8"
    ):
        _cfg(**{"num-server-rounds": 8, "dp.planned-participations": 9})
    with pytest.raises(ValueError, match="dp.plan-quantile"):
        _cfg(**{"dp.plan-quantile": 1.0})
