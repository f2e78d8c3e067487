"""Tests for strategies.weighting: hand-worked values and the laws the weights obey."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from strategies.weighting import (
    PREVALENCE_FLOOR,
    cap_weights,
    effective_noise_multiplier,
    estimate_prevalence,
    fairfed_weights,
    fedavg_weights,
    qfedavg_coefficients,
    reject_reason,
    representation_weights,
    weighted_average,
)

# The 3-client example of the issue: counts per (client, group), num_examples = row sums.
COUNTS = np.array([[90.0, 10.0], [50.0, 50.0], [0.0, 20.0]])
N = np.array([100.0, 100.0, 20.0])


def test_fedavg_weights_by_hand() -> None:
    np.testing.assert_allclose(fedavg_weights([1, 3]), [0.25, 0.75])
    with pytest.raises(ValueError, match="num-examples"):
        fedavg_weights([0, 0])


def test_prevalence_clips_noise_and_floors_empty_groups() -> None:
    # Group 0: 3 + 0 (the -2 is clipped) = 3, group 1: 1, group 2: nothing at all.
    p = estimate_prevalence(np.array([[3.0, 1.0, -0.5], [-2.0, 0.0, 0.0]]))
    floor = PREVALENCE_FLOOR
    np.testing.assert_allclose(p, np.array([0.75, 0.25, floor]) / (1 + floor))
    assert np.all(np.isfinite(1 / p))
    np.testing.assert_allclose(estimate_prevalence(np.zeros((2, 4))), [0.25] * 4)
    with pytest.raises(ValueError, match="finite"):  # not clipped to 0 first
        estimate_prevalence(np.array([[-np.inf, 5.0], [3.0, 1.0]]))


def test_representation_hand_worked_three_clients() -> None:
    # p = (140, 80) / 220 = (7/11, 4/11); α = 1 → 1/p = (11/7, 11/4).
    # raw_1 = 90·11/7 + 10·11/4 = 2365/14, raw_2 = 50·11/7 + 50·11/4 = 3025/14,
    # raw_3 = 20·11/4 = 55;  Σ = 440 (= G·N, since Σ_k n_kg / p_g = N per group).
    # Normalised: (2365/6160, 3025/6160, 1/8) = (0.3839, 0.4911, 0.125).
    np.testing.assert_allclose(estimate_prevalence(COUNTS), [7 / 11, 4 / 11])
    expected = np.array([2365 / 6160, 3025 / 6160, 1 / 8])
    # cap = 2: limits 2·(5/11, 5/11, 1/11) = (0.909, 0.909, 0.182): nobody is capped.
    np.testing.assert_allclose(representation_weights(COUNTS, N, alpha=1, cap=2), expected)
    # cap = 1.2: client 3's limit is 1.2/11 = 6/55 < 1/8, so it is pinned at 6/55 and the
    # other two share 49/55 in ratio 2365:3025 → ×(49/55)/(7/8) = ×56/55:
    # w_1 = 2365/6160·56/55 = 43/110, w_2 = 3025/6160·56/55 = 1/2 (both under 6/11).
    capped = representation_weights(COUNTS, N, alpha=1, cap=1.2)
    np.testing.assert_allclose(capped, [43 / 110, 55 / 110, 12 / 110])


def test_client_reporting_nothing_takes_the_mix_of_reported_groups() -> None:
    # Group 2 is reported by nobody (floored p); client 3's noisy counts all clip to 0.
    # p = (110, 90)/200 over the reported groups, α = 1: raw_3 = 100·(p_0/p_0 + p_1/p_1)
    # = 200 and raw_1 + raw_2 = 100·(110/110 + 90/90)·2 = 400, so w_3 = 1/3 exactly (the
    # floored group would otherwise add 100·floor/floor and lift it to 3/7).
    counts = np.array([[50.0, 50.0, 0.0], [60.0, 40.0, 0.0], [-3.0, -5.0, -1.0]])
    w = representation_weights(counts, [100, 100, 100], alpha=1.0, cap=4.0)
    assert w[2] == pytest.approx(1 / 3)
    assert w.sum() == pytest.approx(1.0)


def test_alpha_zero_is_fedavg_exactly_even_with_noisy_counts() -> None:
    noisy = COUNTS + np.array([[3.2, -4.1], [-60.0, 7.7], [1.5, -30.0]])
    for cap in (1.0, 2.0):
        w = representation_weights(noisy, N, alpha=0.0, cap=cap)
        assert np.array_equal(w, fedavg_weights(N))


def test_cap_stops_a_lying_client() -> None:
    # 4 honest clients (mostly group 0) and a liar claiming only the rare group 1.
    honest = np.array([[95.0, 5.0], [90.0, 10.0], [98.0, 2.0], [85.0, 15.0]])
    counts = np.vstack([honest, [[0.0, 100.0]]])
    n = counts.sum(axis=1)
    ref = fedavg_weights(n)  # every client: 100 / 500 = 0.2
    uncapped = representation_weights(counts, n, alpha=1, cap=100)
    # p = (368, 132) / 500; the liar's raw = 100 · 500/132 out of Σ raw = 2 · 500.
    assert uncapped[-1] == pytest.approx(50 / 132)  # ≈ 0.379, almost 2× its share
    w = representation_weights(counts, n, alpha=1, cap=1.5)
    assert w[-1] == pytest.approx(1.5 * ref[-1])  # pinned at exactly cap × its share
    # the honest clients share the rest in their uncapped ratios, each within its own cap
    np.testing.assert_allclose(w[:-1] / w[:-1].sum(), uncapped[:-1] / uncapped[:-1].sum())
    assert np.all(w[:-1] <= 1.5 * ref[:-1])
    # honest clients keep their relative order (more rare-group data → more weight)
    assert np.argsort(w[:-1]).tolist() == np.argsort(honest[:, 1]).tolist()


def test_cap_water_filling_iterates() -> None:
    # ref uniform 1/4, cap 1.2 → limit 0.3. Input (0.5, 0.3, 0.15, 0.05): client 0 pinned,
    # 0.7 shared in 0.3:0.15:0.05 → client 1 gets 0.42 > 0.3: pinned in a second pass;
    # then 0.4 shared 0.15:0.05 → (0.3, 0.1).
    w = cap_weights(np.array([0.5, 0.3, 0.15, 0.05]), np.full(4, 0.25), 1.2)
    np.testing.assert_allclose(w, [0.3, 0.3, 0.3, 0.1])


def test_cap_rejects_cap_below_one() -> None:
    with pytest.raises(ValueError, match=r"fair\.cap"):
        cap_weights(np.array([0.5, 0.5]), np.array([0.5, 0.5]), 0.9)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    counts=st.lists(st.lists(st.floats(-50, 500), min_size=3, max_size=3), min_size=1, max_size=8),
    sizes=st.lists(st.integers(1, 1000), min_size=8, max_size=8),
    alpha=st.floats(0, 3),
    cap=st.floats(1, 10),
)
def test_weights_sum_to_one_and_respect_cap(
    counts: list[list[float]], sizes: list[int], alpha: float, cap: float
) -> None:
    c = np.array(counts)
    n = np.array(sizes[: len(counts)], dtype=float)
    w = representation_weights(c, n, alpha=alpha, cap=cap)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(w >= 0)
    assert np.all(w <= cap * fedavg_weights(n) + 1e-9)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    raw=st.lists(st.floats(0, 1e3), min_size=2, max_size=10),
    cap=st.floats(1, 5),
)
def test_cap_weights_law(raw: list[float], cap: float) -> None:
    assume(sum(raw) > 0)  # exact zeros allowed: free clients may have no weight at all
    w0 = np.array(raw)
    ref = np.linspace(1, 2, w0.size)
    w = cap_weights(w0, ref, cap)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    limit = cap * ref / ref.sum()
    assert np.all(w <= limit + 1e-9)
    # Water-filling: each client is either pinned exactly at its limit, or free, and the
    # free ones keep their input proportions, scaled up by one common factor c >= 1 (the
    # excess they absorb) that would take every pinned client over its limit.
    share = w0 / w0.sum()
    pinned = np.isclose(w, limit, rtol=1e-9, atol=1e-12)
    free = ~pinned
    if free.any() and share[free].sum() > 0:
        # c = w[free].sum() / share[free].sum(), kept as a fraction: with a subnormal share
        # the quotient overflows to inf (raw=[6.0, 1.1e-308], cap=2)
        kept, given = w[free].sum(), share[free].sum()
        np.testing.assert_allclose(w[free] / kept, share[free] / given, rtol=1e-7, atol=1e-12)
        assert kept >= given * (1 - 1e-9)
        assert np.all(kept * share[pinned] >= limit[pinned] * given * (1 - 1e-7))
    if np.all(share <= limit):  # nothing to cap: the output is the normalised input
        np.testing.assert_allclose(w, share, rtol=1e-9, atol=1e-15)


def test_fairfed_hand_example() -> None:
    # n = (100, 100, 200) → start (0.25, 0.25, 0.5); F = (0.1, 0.3, 0.2),
    # F_global = (10 + 30 + 40) / 400 = 0.2; Δ = (0.1, 0.1, 0); mean Δ = 1/15.
    # β = 1: w = (0.25 - 1/30, 0.25 - 1/30, 0.5 + 1/15) = (13/60, 13/60, 34/60).
    n, f = [100, 100, 200], [0.1, 0.3, 0.2]
    w = fairfed_weights(None, f, 0.2, beta=1.0, num_examples=n)
    np.testing.assert_allclose(w, np.array([13, 13, 34]) / 60)
    # β = 10: (0.25 - 1/3, 0.25 - 1/3, 0.5 + 2/3) → clipped (0, 0, 7/6) → (0, 0, 1).
    np.testing.assert_allclose(fairfed_weights(None, f, 0.2, beta=10.0, num_examples=n), [0, 0, 1])
    # β = 0 keeps the previous weights.
    np.testing.assert_allclose(
        fairfed_weights(np.array([2.0, 1.0, 1.0]), f, 0.2, beta=0.0, num_examples=n),
        [0.5, 0.25, 0.25],
    )


def test_qfedavg_coefficients_by_hand() -> None:
    # L = 1, q = 1: h = ||w - w_k||² + F_k → (1 + 1, 4 + 2), Σh = 8; c = F/Σh = (1/8, 2/8).
    c = qfedavg_coefficients([1.0, 2.0], [1.0, 4.0], q=1.0, lipschitz=1.0)
    np.testing.assert_allclose(c, [1 / 8, 2 / 8])
    # q = 0: h_k = L → c_k = 1/K (plain mean of client models).
    np.testing.assert_allclose(
        qfedavg_coefficients([5.0, 0.1, 2.0], [9.0, 1.0, 0.0], q=0.0, lipschitz=3.0),
        [1 / 3] * 3,
    )


def test_effective_noise_multiplier() -> None:
    assert effective_noise_multiplier(1.0, np.full(4, 0.25), 4) == pytest.approx(1.0)
    # One client at weight 0.5 among 4 sampled: sensitivity doubles, σ_eff halves.
    assert effective_noise_multiplier(1.0, np.array([0.5, 0.2, 0.2, 0.1]), 4) == 0.5


def test_reject_reason() -> None:
    ref = [np.zeros((2, 3)), np.zeros(4)]
    assert reject_reason([np.ones((2, 3)), np.ones(4)], ref) is None
    bad = np.ones(4)
    bad[1] = np.nan
    assert reject_reason([np.ones((2, 3)), bad], ref, names=["w", "b"]) == (
        "non-finite values in 'b'"
    )
    assert reject_reason([np.ones((2, 3)), np.full(4, np.inf)], ref) == ("non-finite values in '1'")
    assert reject_reason([np.ones((3, 2)), np.ones(4)], ref, names=["w", "b"]) == (
        "shape mismatch for 'w': expected (2, 3) got (3, 2)"
    )
    assert reject_reason([np.ones((2, 3))], ref) == ("wrong number of arrays: expected 2 got 1")
    # An integer or non-numeric array in place of a float one is rejected, not cast.
    assert reject_reason([np.ones((2, 3)), np.ones(4, dtype=np.int64)], ref) == (
        "dtype mismatch for '1': expected float64 got int64"
    )
    assert reject_reason([np.ones((2, 3)), np.array(list("abcd"))], ref) == (
        "dtype mismatch for '1': expected float64 got <U1"
    )


def test_weighted_average_by_hand() -> None:
    a = [np.array([1.0, 2.0], dtype=np.float32), np.array([1, 3])]
    b = [np.array([3.0, 6.0], dtype=np.float32), np.array([1, 3])]
    avg = weighted_average([a, b], [1.0, 3.0])  # weights 0.25, 0.75
    np.testing.assert_allclose(avg[0], [2.5, 5.0])
    assert avg[0].dtype == np.float32
    np.testing.assert_array_equal(avg[1], [1, 3])
    assert avg[1].dtype == a[1].dtype
