"""Group-balanced Poisson sampling: inclusion rates as configured, accounted at q_max."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.group_sampling import (
    GroupPoissonSampler,
    expected_batch,
    group_rates,
    records_per_group,
    with_batch_floor,
)


def test_group_rates_are_proportional_with_the_largest_at_q_max() -> None:
    counts = np.array([400.0, 200.0, 100.0, 50.0])
    rates = group_rates(np.array([0.5, 1.0, 2.0, 4.0]), counts, max_rate=0.2)
    np.testing.assert_allclose(rates, [0.025, 0.05, 0.1, 0.2])
    np.testing.assert_allclose(group_rates(np.zeros(3), np.ones(3), max_rate=0.1), [0.1] * 3)


def test_groups_the_release_does_not_show_do_not_throttle_the_others() -> None:
    # A client holding two groups equally: the absent ones are floored, so capped at 4.
    rates = group_rates(np.array([0.5, 0.5, 4.0, 4.0]), np.array([150.0, 150.0, 0.0, 0.0]),
                        max_rate=0.25)  # fmt: skip
    np.testing.assert_allclose(rates, [0.25, 0.25, 0.25, 0.25])
    assert (rates <= 0.25).all()


def test_per_record_inclusion_rates_match_over_many_draws() -> None:
    rates = torch.tensor([0.05] * 200 + [0.2] * 100 + [0.4] * 50)
    draws = 4000
    sampler = GroupPoissonSampler(rates, steps=draws, generator=torch.Generator().manual_seed(0))
    hits = torch.zeros(len(rates))
    sizes = []
    for batch in sampler:
        hits[batch] += 1
        sizes.append(len(batch))
    assert len(sampler) == draws and len(sizes) == draws
    for lo, hi, rate in ((0, 200, 0.05), (200, 300, 0.2), (300, 350, 0.4)):
        observed = float(hits[lo:hi].sum()) / ((hi - lo) * draws)
        stderr = (rate * (1 - rate) / ((hi - lo) * draws)) ** 0.5
        assert abs(observed - rate) < 5 * stderr, (rate, observed)
    # inclusions are independent: batch sizes vary like a Poisson-binomial, not fixed
    mean, var = float(np.mean(sizes)), float(np.var(sizes))
    expected_var = float((rates * (1 - rates)).sum())
    assert abs(mean - float(rates.sum())) < 0.5
    assert 0.8 * expected_var < var < 1.2 * expected_var


def test_expected_batch_spreads_the_public_record_count_as_the_release_shows_it() -> None:
    rates = np.array([0.1, 0.5, 0.5])
    # the hidden cells (denoised to 0, or noise below 0) share the 20 records left
    assert expected_batch(np.array([100.0, -3.0, 0.0]), rates, records=120) == pytest.approx(20)
    assert records_per_group(np.array([100.0, -3.0, 0.0]), 120) == pytest.approx([100, 10, 10])
    # count noise that releases more than the client holds is scaled down to its size
    assert records_per_group(np.array([90.0, 30.0, 0.0]), 60) == pytest.approx([45, 15, 0])
    # a client whose every cell was denoised to 0 (n = 30): 30 records, not 3
    assert expected_batch(np.zeros(3), np.full(3, 0.2), records=30) == pytest.approx(6)


# A client that is 90 % one common group, drawn at a tenth of q: its batch keeps 15.75 %.
FLOOR_COUNTS = np.array([900.0, 50.0, 30.0, 20.0])
FLOOR_RATES = np.array([0.02, 0.1, 0.15, 0.2])


def batch_share(rates: np.ndarray) -> float:
    return float((FLOOR_COUNTS * rates).sum() / (FLOOR_COUNTS.sum() * 0.2))


def test_a_batch_floor_already_met_or_zero_leaves_the_rates() -> None:
    for floor in (0.0, 0.15):
        tempered = with_batch_floor(
            FLOOR_RATES, FLOOR_COUNTS, max_rate=0.2, min_batch_share=floor, records=1000
        )
        np.testing.assert_array_equal(tempered, FLOOR_RATES)


def test_a_batch_floor_tempers_the_rates_to_exactly_the_floor() -> None:
    tempered = with_batch_floor(
        FLOOR_RATES, FLOOR_COUNTS, max_rate=0.2, min_batch_share=0.5, records=1000
    )
    assert batch_share(tempered) == pytest.approx(0.5, abs=1e-9)
    assert batch_share(tempered) >= 0.5
    assert tempered.max() == 0.2  # the accounted rate q_max is still the largest
    assert (np.diff(tempered) > 0).all()  # scarcer groups are still drawn more
    assert (tempered >= FLOOR_RATES).all()


def test_a_full_batch_floor_is_plain_poisson_sampling() -> None:
    tempered = with_batch_floor(
        FLOOR_RATES, FLOOR_COUNTS, max_rate=0.2, min_batch_share=1.0, records=1000
    )
    np.testing.assert_allclose(tempered, [0.2] * 4)


def test_invalid_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        GroupPoissonSampler(torch.tensor([0.5, 1.5]), steps=1, generator=torch.Generator())
