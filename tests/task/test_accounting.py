"""Tests for task.accounting: golden ε, composition with count releases, ledger state."""

from __future__ import annotations

import json
import math
import warnings

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from task.accounting import (
    PrivacyLedger,
    default_delta,
    epsilon_of,
    grouped_events,
    noise_group_counts,
    release_event,
    resolve_delta,
)

DELTA = 1e-5
# Opacus 1.6 values for (σ=1.0, q=0.01, 1000 steps, δ=1e-5), computed once and checked
# against dp-accounting 0.6 (RdpAccountant 2.1013665254, PLDAccountant 1.8282436456).
GOLDEN_RDP = 2.1013652716430564
GOLDEN_PRV = 1.838371637017295
# RDP of one Gaussian mechanism σ_s = 2 at δ=1e-5 (dp-accounting RdpAccountant agrees).
GOLDEN_RELEASE_RDP = 2.1657156590294435


def _dp_accounting_eps(history: list[tuple[float, float, int]], pld: bool = False) -> float:
    """Independent recomputation: Poisson-subsampled Gaussian steps + plain Gaussians."""
    acc = PLDAccountant() if pld else RdpAccountant()
    for sigma, q, steps in history:
        event = dp_accounting.GaussianDpEvent(sigma)
        if q < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(event, steps)
    return float(acc.get_epsilon(DELTA))


def test_default_and_resolved_delta() -> None:
    assert default_delta(1000) == pytest.approx(1e-4)
    assert default_delta(7) < 1 / 7
    assert resolve_delta(0.0, num_examples=500) == pytest.approx(2e-4)
    assert resolve_delta(1e-5, num_examples=500) == 1e-5
    with pytest.raises(ValueError, match=r"dp\.delta"):
        resolve_delta(1e-2, num_examples=500)  # not below 1/n = 2e-3
    with pytest.raises(ValueError, match="num_examples"):
        default_delta(0)


def test_golden_rdp_matches_opacus_and_dp_accounting() -> None:
    ledger = PrivacyLedger(accountant="rdp", history=[(1.0, 0.01, 1000)])
    assert ledger.epsilon(DELTA) == pytest.approx(GOLDEN_RDP, rel=1e-9)
    assert _dp_accounting_eps([(1.0, 0.01, 1000)]) == pytest.approx(GOLDEN_RDP, rel=0.01)


def test_golden_prv_is_a_tight_upper_bound() -> None:
    ledger = PrivacyLedger(accountant="prv", history=[(1.0, 0.01, 1000)])
    eps = ledger.epsilon(DELTA)
    assert eps == pytest.approx(GOLDEN_PRV, rel=1e-4)
    pld = _dp_accounting_eps([(1.0, 0.01, 1000)], pld=True)
    assert pld <= eps <= pld + 0.02  # PRV returns its upper bound (eps_error 0.01)
    assert eps < GOLDEN_RDP  # PRV is tighter than RDP


def test_empty_and_noiseless_histories() -> None:
    assert PrivacyLedger().epsilon(DELTA) == 0.0
    assert PrivacyLedger(history=[(0.0, 0.1, 3)]).epsilon(DELTA) == math.inf
    assert PrivacyLedger(history=[(0.0, 0.1, 0)]).epsilon(DELTA) == 0.0  # no step taken


training_events = st.tuples(
    st.floats(min_value=0.7, max_value=5.0),
    st.floats(min_value=0.001, max_value=0.1),
    st.integers(min_value=0, max_value=200),
)
release_events = st.floats(min_value=1.0, max_value=10.0).map(release_event)
events_strategy = st.lists(training_events | release_events, min_size=1, max_size=5)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(events=events_strategy)
def test_epsilon_never_decreases_as_events_are_appended(events: list) -> None:
    # Start from a realistic spend: tiny ε makes Opacus warn that its largest RDP order
    # (63) is optimal, a true but irrelevant note here.
    ledger = PrivacyLedger(accountant="rdp", history=[(1.0, 0.05, 50)])
    previous = ledger.epsilon(DELTA)
    for event in events:
        ledger.record([event])
        eps = ledger.epsilon(DELTA)
        assert eps >= previous - 1e-12
        previous = eps


def test_prv_epsilon_grows_over_rounds() -> None:
    ledger = PrivacyLedger(accountant="prv")
    values = []
    for _ in range(3):
        ledger.record([(1.0, 0.05, 20), release_event(3.0)])
        values.append(ledger.epsilon(DELTA))
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_release_composes_into_same_history(accountant: str) -> None:
    training = [(1.0, 0.01, 1000)]
    with_releases = [*training, release_event(2.0), release_event(2.0)]
    assert release_event(2.0) == (2.0, 1.0, 1)
    eps_train = epsilon_of(training, delta=DELTA, accountant=accountant)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps_all = epsilon_of(with_releases, delta=DELTA, accountant=accountant)
    assert not [w for w in caught if "divide by zero" in str(w.message)]
    assert eps_all > eps_train + 0.5
    if accountant == "rdp":
        assert eps_all == pytest.approx(_dp_accounting_eps(with_releases), rel=1e-3)
        opacus_raw = RDPAccountant()
        opacus_raw.history = list(with_releases)  # anyone can recompute from the raw list
        assert eps_all == pytest.approx(opacus_raw.get_epsilon(DELTA), rel=1e-12)
    else:
        pld = _dp_accounting_eps(with_releases, pld=True)
        assert pld <= eps_all <= pld + 0.03


def test_single_release_is_plain_gaussian_mechanism() -> None:
    eps = epsilon_of([release_event(2.0)], delta=DELTA, accountant="rdp")
    assert eps == pytest.approx(GOLDEN_RELEASE_RDP, rel=1e-9)
    assert _dp_accounting_eps([(2.0, 1.0, 1)]) == pytest.approx(eps, rel=1e-6)


def test_would_exceed_is_computed() -> None:
    ledger = PrivacyLedger(accountant="rdp", history=[(1.0, 0.01, 1000)])
    extra = [(1.0, 0.01, 500), release_event(2.0)]
    after = RDPAccountant()
    after.history = [(1.0, 0.01, 1000), *extra]
    eps_after = after.get_epsilon(DELTA)
    assert ledger.would_exceed(extra, budget=eps_after - 0.01, delta=DELTA)
    assert not ledger.would_exceed(extra, budget=eps_after + 0.01, delta=DELTA)
    assert ledger.would_exceed([], budget=GOLDEN_RDP - 0.01, delta=DELTA)
    assert ledger.history == [(1.0, 0.01, 1000)]  # asking does not record


def test_state_round_trip() -> None:
    ledger = PrivacyLedger(accountant="prv")
    ledger.record([(0.9, 0.05, 20), release_event(3.0), (0.9, 0.05, 19)])
    state = ledger.to_state()
    assert state["accountant"] == "prv"
    assert all(type(v) is float for v in state["noise_multipliers"])
    assert all(type(v) is int for v in state["steps"])
    restored = PrivacyLedger.from_state(state)
    assert restored.history == ledger.history
    assert restored.accountant == "prv"
    assert restored.epsilon(DELTA) == ledger.epsilon(DELTA)
    assert json.loads(json.dumps(restored.history_as_json())) == [
        [0.9, 0.05, 20],
        [3.0, 1.0, 1],
        [0.9, 0.05, 19],
    ]


def test_empty_and_bad_state() -> None:
    empty = PrivacyLedger.from_state({}, accountant="prv")
    assert empty.history == [] and empty.accountant == "prv"
    assert PrivacyLedger.from_state(PrivacyLedger().to_state()).history == []
    with pytest.raises(ValueError, match="equal length"):
        PrivacyLedger.from_state({"noise_multipliers": [1.0], "sample_rates": [], "steps": []})
    with pytest.raises(ValueError, match="sample_rate"):
        PrivacyLedger().record([(1.0, 1.5, 3)])


def test_noise_group_counts() -> None:
    counts = np.full(40_000, 7.0)
    noised = noise_group_counts(counts, sigma=2.0, rng=np.random.default_rng(0))
    assert noised.shape == counts.shape
    assert noised.mean() == pytest.approx(7.0, abs=0.05)
    assert noised.std() == pytest.approx(2.0, rel=0.02)
    with pytest.raises(ValueError, match=r"dp\.stats-noise"):
        noise_group_counts(np.array([3.0, 1.0]), sigma=0.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="counts"):
        noise_group_counts(np.array([-1.0]), sigma=1.0, rng=np.random.default_rng(0))


def test_denoise_zeroes_cells_below_the_threshold_only() -> None:
    from task.accounting import denoise_counts

    released = np.array([-5.0, 39.9, 40.0, 300.0])
    np.testing.assert_array_equal(
        denoise_counts(released, sigma=20.0, threshold=2.0), [0.0, 0.0, 40.0, 300.0]
    )
    np.testing.assert_array_equal(denoise_counts(released, sigma=20.0, threshold=0.0), released)


def test_rdp_epsilon_is_opacus_rdp_accountant_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for _ in range(25):
        events = [
            (float(rng.uniform(0.4, 4.0)), float(rng.choice([1.0, 0.5, 0.1, 1 / 7])),
             int(rng.integers(1, 60)))
            for _ in range(int(rng.integers(1, 4)))
        ]  # fmt: skip
        delta = float(rng.choice([1e-5, 1e-3]))
        opacus_accountant = RDPAccountant()
        opacus_accountant.history = grouped_events(events)
        assert epsilon_of(events, delta=delta, accountant="rdp") == opacus_accountant.get_epsilon(
            delta=delta
        )
