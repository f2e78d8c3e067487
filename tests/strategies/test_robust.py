"""Robust aggregation (``robust.method``): the weighted rules, worked by hand and against
Flower's unweighted ones, and what they bound in a strategy."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.base import TracedFedAvg
from strategies.robust import (
    robust_aggregate,
    update_norm,
    weighted_median,
    weighted_trimmed_mean,
)
from task.config import RobustConfig, load_defaults, parse_run_config
from tests.strategies.test_strategies import as_numpy, configure, reply
from tests.strategies.test_strategies import server_identity as server_identity  # autouse

RNG = np.random.default_rng(0)


def test_weighted_trimmed_mean_by_hand() -> None:
    # 4 clients, trim 0.25: int(0.25 · 4) = 1 dropped at each end of every column, then the
    # weighted mean of the two left: column 0 keeps 1 (w 0.1) and 2 (w 0.3) -> 1.75
    values = np.array([[0.0, 9.0], [1.0, 8.0], [2.0, 7.0], [100.0, -50.0]])
    weights = np.array([0.4, 0.1, 0.3, 0.2])
    # column 1 sorted: -50 (w 0.2), 7 (w 0.3), 8 (w 0.1), 9 (w 0.4): keeps 7 and 8 -> 7.25
    assert weighted_trimmed_mean(values, weights, 0.25) == pytest.approx([1.75, 7.25])
    # trim 0.2 of 4 clients cuts int(0.8) = 0: the plain weighted mean
    assert weighted_trimmed_mean(values, weights, 0.2) == pytest.approx(weights @ values)


def test_weighted_median_by_hand() -> None:
    values = np.array([[0.0, 5.0], [1.0, 4.0], [10.0, 3.0]])
    # column 0: weights 0.2 | 0.5 | 0.3 -> half the weight is passed inside value 1
    # column 1 sorted (3, 4, 5) carries weights (0.3, 0.5, 0.2): again the middle one
    assert weighted_median(values, np.array([0.2, 0.5, 0.3])) == pytest.approx([1.0, 4.0])


@pytest.mark.parametrize("clients", [4, 5, 10])
def test_equal_weights_give_flowers_trimmed_mean_and_numpys_median(clients: int) -> None:
    values = RNG.normal(size=(clients, 50))
    weights = np.full(clients, 1 / clients)
    trim = 0.2
    np.testing.assert_allclose(weighted_trimmed_mean(values, weights, trim),
                               trim_mean(values, trim), atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(weighted_median(values, weights), np.median(values, axis=0),
                               atol=1e-12)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=8),
    scale=st.floats(2.0, 1e4),
    bound=st.floats(0.01, 5.0),
)
def test_norm_bound_moves_the_model_by_at_most_the_bound(
    weights: list[float], scale: float, bound: float
) -> None:
    reference = [np.zeros(3), np.zeros((2, 2))]
    rng = np.random.default_rng(len(weights))
    clients = [[rng.normal(size=a.shape) for a in reference] for _ in weights]
    clients[0] = [scale * a for a in clients[0]]  # a poisoning client
    out = robust_aggregate(clients, weights, reference, method="norm-bound", norm_bound=bound)
    moved = np.sqrt(sum(float(np.sum((o - r) ** 2)) for o, r in zip(out, reference, strict=True)))
    assert moved <= bound * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(clients=st.integers(3, 10), scale=st.floats(10.0, 1e4), factor=st.floats(0.5, 5.0))
def test_relative_norm_bound_clips_to_a_factor_of_the_median_norm(
    clients: int, scale: float, factor: float
) -> None:
    """One poisoner of K moves the model by at most factor × the honest median norm, and
    honest updates within that bound pass unchanged."""
    reference = [np.zeros(4), np.zeros((2, 3))]
    rng = np.random.default_rng(clients)
    updates = [[rng.normal(size=a.shape) for a in reference] for _ in range(clients)]
    updates[0] = [scale * a for a in updates[0]]
    norms = [update_norm(u, reference) for u in updates]
    bound = factor * float(np.median(norms))
    weights = np.full(clients, 1 / clients)
    out = robust_aggregate(updates, weights, reference, method="relative-norm-bound",
                           norm_factor=factor)  # fmt: skip
    assert update_norm(out, reference) <= bound * (1 + 1e-9)
    expected = [sum(w * min(1.0, bound / n) * u[k] for w, n, u in zip(weights, norms, updates,
                                                                      strict=True))
                for k in range(2)]  # fmt: skip
    for got, want in zip(out, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_none_is_the_weighted_mean() -> None:
    clients = [[np.array([1.0, 2.0])], [np.array([3.0, 6.0])]]
    out = robust_aggregate(clients, [1, 3], [np.zeros(2)], method="none")
    np.testing.assert_allclose(out[0], [2.5, 5.0])


def poisoned_round(method: str, scale: float = 100.0) -> np.ndarray:
    """FedAvg over 10 replies near (1, 1), one of them a ×``scale`` update."""
    strategy = TracedFedAvg(robust=RobustConfig(method=method, trim=0.1, norm_bound=2.0))
    configure(strategy, list(range(1, 11)))
    rng = np.random.default_rng(7)
    replies = []
    for node in range(1, 11):
        w = 1.0 + 0.05 * rng.normal(size=2)
        replies.append(reply(node, {"w": scale * w if node == 1 else w, "b": [1.0]}))
    arrays, _ = strategy.aggregate_train(1, replies)
    return as_numpy(arrays)["w"]


def test_a_heavy_poisoner_is_trimmed_whatever_its_weight() -> None:
    values = np.array([[1.0], [1.1], [0.9], [100.0]])
    weights = np.array([0.1, 0.1, 0.1, 0.7])  # the poisoner holds most of the weight
    # 0.9 and 100 are cut; 1.0 and 1.1 keep their (equal) weights
    assert weighted_trimmed_mean(values, weights, 0.25) == pytest.approx([1.05])


def test_a_scaled_update_dominates_the_mean_but_not_the_robust_rules() -> None:
    assert np.all(poisoned_round("none") > 10)  # (100 + 9) / 10 per coordinate
    for method in ("trimmed-mean", "median"):
        np.testing.assert_allclose(poisoned_round(method), [1.0, 1.0], atol=0.1)
    assert np.linalg.norm(poisoned_round("norm-bound")) <= 2.0 + 1e-9  # the global was 0
    # the poisoner's ×100 is cut to 3 × the median update norm (≈ 1.7): one tenth of that
    # weighs on the mean, which stays within 0.3 of the honest (1, 1)
    np.testing.assert_allclose(poisoned_round("relative-norm-bound"), [1.0, 1.0], atol=0.3)


def test_robust_is_refused_for_qfedavg_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="robust.method.*qfedavg"):
        parse_run_config(load_defaults() | {"strategy": "qfedavg", "robust.method": "median"})


def test_gated_trimming_drops_only_the_outsized_clients_values() -> None:
    # column 0: the honest extremes 0.0 and 2.0 would be cut by plain trimming (trim 0.25 of
    # 4); with the gate only client 3 (update norm 50 ≫ 3 × the median) loses its value
    reference = [np.zeros(2)]
    clients = [[np.array([0.0, 1.0])], [np.array([1.0, 1.0])], [np.array([2.0, 1.0])],
               [np.array([50.0, 1.0])]]  # fmt: skip
    weights = np.array([0.25, 0.25, 0.25, 0.25])
    gated = robust_aggregate(clients, weights, reference, method="trimmed-mean", trim=0.25,
                             trim_gate=3.0)  # fmt: skip
    np.testing.assert_allclose(gated[0], [1.0, 1.0])  # (0 + 1 + 2) / 3 and 1
    plain = robust_aggregate(clients, weights, reference, method="trimmed-mean", trim=0.25)
    np.testing.assert_allclose(plain[0], [1.5, 1.0])  # (1 + 2) / 2: the honest 0 cut too


@settings(max_examples=40, deadline=None)
@given(clients=st.integers(4, 12), gate=st.floats(1.0, 30.0))
def test_gated_trimming_is_the_weighted_mean_when_no_update_is_outsized(
    clients: int, gate: float
) -> None:
    reference = [np.zeros(5)]
    rng = np.random.default_rng(clients)
    updates = [[rng.normal(size=5)] for _ in range(clients)]
    norms = [update_norm(u, reference) for u in updates]
    assume_gate = max(gate, 1.001 * max(norms) / float(np.median(norms)))  # none above it
    weights = rng.uniform(0.1, 1.0, size=clients)
    out = robust_aggregate(updates, weights, reference, method="trimmed-mean", trim=0.2,
                           trim_gate=assume_gate)  # fmt: skip
    np.testing.assert_allclose(
        out[0], (weights / weights.sum()) @ np.stack([u[0] for u in updates])
    )


def test_the_gated_default_trims_a_scaled_update() -> None:
    gate = float(load_defaults()["robust.trim-gate"])
    reference = [np.zeros(2)]
    rng = np.random.default_rng(3)
    honest = [[1.0 + 0.05 * rng.normal(size=2)] for _ in range(9)]
    poisoned = [[100.0 * honest[0][0]], *honest]
    weights = np.full(10, 0.1)
    out = robust_aggregate(poisoned, weights, reference, method="trimmed-mean", trim=0.1,
                           trim_gate=gate)  # fmt: skip
    np.testing.assert_allclose(out[0], [1.0, 1.0], atol=0.1)
