"""What the server does with faulty clients: malformed replies rejected, liars capped,
silent nodes reported, rounds below ``min-clients`` skipped."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message

from clients import faults
from strategies.base import TracedFedAvg
from strategies.fairfed import FairFed
from strategies.qfedavg import TracedQFedAvg
from strategies.representation import RepresentationAware
from task import wire
from tests.strategies.test_strategies import (
    _metadata,
    as_numpy,
    configure,
    error_reply,
    reply,
)
from tests.strategies.test_strategies import server_identity as server_identity  # autouse

GLOBAL = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}


def torch_reply(node: int, weights: dict[str, torch.Tensor], metrics: dict[str, Any]) -> Message:
    content = RecordDict(
        {wire.ARRAYS_RECORD: ArrayRecord(weights), wire.METRICS_RECORD: MetricRecord(metrics)}
    )
    return make_message(metadata=_metadata(node), content=content)


def honest_metrics(n: int) -> dict[str, Any]:
    return {
        wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: 1.0, wire.TRAIN_ACCURACY: 0.5,
        wire.TRAIN_SECONDS: 1.0, wire.EPSILON: 1.0, wire.BUDGET_EXHAUSTED: 0,
        wire.GROUP_COUNTS: [float(n), 0.0], wire.FAIR_METRIC: 0.0,
    }  # fmt: skip


def test_200_random_nan_and_garbage_replies_are_all_rejected_none_aggregated() -> None:
    rng = np.random.default_rng(20)
    bad_seen = 0
    for server_round in range(1, 21):  # 20 rounds of 10 replies
        strategy = TracedFedAvg()
        configure(strategy, list(range(1, 11)), arrays={k: v.numpy() for k, v in GLOBAL.items()})
        replies, honest, bad = [], {}, set()
        for node in range(1, 11):
            weights = {k: torch.randn(v.shape) for k, v in GLOBAL.items()}
            metrics = honest_metrics(int(rng.integers(5, 50)))
            if rng.random() < 0.5:
                bad.add(node)
                if rng.random() < 0.5:
                    weights = faults.with_nan(weights)
                else:
                    weights, metrics, _ = faults.garbled(weights, metrics, rng)
            else:
                honest[node] = (weights, metrics[wire.NUM_EXAMPLES])
            replies.append(torch_reply(node, weights, metrics))
        bad_seen += len(bad)
        arrays, _ = strategy.aggregate_train(server_round, replies)
        trace = strategy.last_round
        assert set(trace.rejected) == bad
        assert set(trace.weights) == set(honest)
        if honest:
            total = sum(n for _, n in honest.values())
            expected = sum(w["w"].numpy() * n / total for w, n in honest.values())
            np.testing.assert_allclose(as_numpy(arrays)["w"], expected, rtol=1e-5, atol=1e-6)
    assert bad_seen > 80  # the randomized mix did exercise the screening


def test_a_lying_client_gains_at_most_cap_times_its_fedavg_weight() -> None:
    cap = 3.0
    strategy = RepresentationAware(alpha=2.0, cap=cap, group_names=["common", "rare"])
    configure(strategy, list(range(1, 11)))
    sizes = {node: 10 * node for node in range(1, 11)}
    replies = []
    for node, n in sizes.items():
        counts = [0.9 * n, 0.1 * n]
        if node == 4:  # the liar: all of its examples claimed for the rare group
            counts = faults.lying_counts(counts, rarest=1)
        replies.append(reply(node, {"w": [0.0, 0.0], "b": [0.0]}, num_examples=n,
                             group_counts=counts))  # fmt: skip
    strategy.aggregate_train(1, replies)
    fedavg = sizes[4] / sum(sizes.values())
    assert strategy.last_round.weights[4] <= cap * fedavg + 1e-12
    assert strategy.last_round.weights[4] > fedavg  # the lie did pay, up to the cap


def test_each_failure_is_reported_with_its_reason_and_silent_nodes_as_timeouts() -> None:
    strategy = TracedFedAvg(round_timeout=30.0)
    configure(strategy, [1, 2, 3, 4])
    replies = [reply(1, {"w": [1.0, 1.0], "b": [1.0]}), reply(2, {"w": [1.0, 1.0], "b": [1.0]}),
               error_reply(3)]  # node 4 never answers  # fmt: skip
    strategy.aggregate_train(1, replies)
    trace = strategy.last_round
    assert trace.failures == 2
    assert "boom" in trace.failure_reasons[3]
    assert trace.failure_reasons[4] == "no reply within round-timeout = 30 s"
    assert trace.to_json()["failure_reasons"]["4"].startswith("no reply")


def test_a_round_below_min_clients_is_skipped_not_aggregated() -> None:
    strategy = TracedFedAvg(min_clients=3)
    configure(strategy, [1, 2, 3])
    replies = [reply(1, {"w": [1.0, 1.0], "b": [1.0]}), reply(2, {"w": [5.0, 5.0], "b": [1.0]}),
               error_reply(3)]  # fmt: skip
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics is None
    trace = strategy.last_round
    assert trace.weights == {}
    assert trace.skipped == "2 accepted replies, fewer than min-clients = 3"
    assert trace.to_json()["skipped"] == trace.skipped
    # with enough survivors the same strategy aggregates
    configure(strategy, [1, 2, 3])
    replies[2] = reply(3, {"w": [3.0, 3.0], "b": [1.0]})
    arrays, _ = strategy.aggregate_train(2, replies)
    np.testing.assert_allclose(as_numpy(arrays)["w"], [3.0, 3.0])
    assert "skipped" not in strategy.last_round.to_json()


@pytest.mark.parametrize("min_clients", [1, 2])
def test_min_clients_counts_accepted_replies_not_received_ones(min_clients: int) -> None:
    strategy = TracedFedAvg(min_clients=min_clients)
    configure(strategy, [1, 2])
    nan = reply(2, {"w": [float("nan"), 0.0], "b": [1.0]})
    arrays, _ = strategy.aggregate_train(1, [reply(1, {"w": [1.0, 1.0], "b": [1.0]}), nan])
    assert (arrays is None) == (min_clients == 2)


@pytest.mark.parametrize(
    ("make", "metrics", "reason"),
    [
        (TracedFedAvg, {"num_examples": 1e308}, "'num-examples' must be finite"),
        (
            lambda: RepresentationAware(alpha=2.25, cap=8.0, group_names=["a", "b"]),
            {"group_counts": [1e308, 1e308]},
            "beyond ±1e+12, in 'group-counts'",
        ),
        (lambda: FairFed(beta=1.0), {"fair_metric": 1e308}, "'fair-metric' must be finite"),
        (lambda: FairFed(beta=1.0), {"fair_metric": 2.0}, "and <= 1"),
        (
            lambda: TracedQFedAvg(client_learning_rate=1.0, q=2.0),
            {"train_loss": 1e200},
            "'train-loss' must be finite",
        ),
        (TracedFedAvg, {"budget_exhausted": 2}, "'budget-exhausted' must be 0 or 1"),
    ],
)
def test_huge_but_finite_numbers_are_rejected_before_they_overflow_the_weights(
    make: Any, metrics: dict[str, Any], reason: str
) -> None:
    """One such reply used to end the run (weights overflowed to inf/NaN inside
    aggregate_train) or, with q-FedAvg, to NaN the global model without an error."""
    strategy = make()
    configure(strategy, [1, 2, 3])
    arrays = {"w": [1.0, 1.0], "b": [1.0]}
    replies = [reply(1, arrays, **metrics), reply(2, arrays), reply(3, arrays)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert reason in strategy.last_round.rejected[1]
    assert set(strategy.last_round.weights) == {2, 3}
    assert all(np.isfinite(v).all() for v in as_numpy(aggregated).values())


def test_fairfed_keeps_the_restored_factor_of_a_partition_not_seen_since_the_resume() -> None:
    strategy = FairFed(beta=1.0)
    strategy.resume_from(1, {"factors": {"0": 0.2, "1": 1.8, "2": 1.0}})
    configure(strategy, [10, 12])
    replies = []
    for node, partition in ((10, 0), (12, 2)):
        msg = reply(node, {"w": [0.0, 0.0], "b": [0.0]}, fair_metric=0.1)
        msg.content[wire.CLIENT_RECORD] = ConfigRecord({wire.PARTITION_ID: partition})
        replies.append(msg)
    strategy.aggregate_train(2, replies)
    factors = strategy.checkpoint_state()["factors"]
    assert set(factors) == {"0", "1", "2"}
    assert factors["1"] == 1.8  # a second resume still has it
