"""Flower strategy adapters on mock reply Messages; expected arrays worked out by hand."""

import time
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.privacy_accounting import SamplingMethod
from flwr.supercore.task_identity import TaskIdentity

from strategies import build_strategy
from strategies.base import TracedFedAvg
from strategies.fairfed import FairFed
from strategies.qfedavg import TracedQFedAvg
from strategies.representation import RepresentationAware
from strategies.screened_clipping import UNCHANGED, ScreenedFixedClipping
from strategies.screening import RoundTrace
from task import wire
from task.config import load_defaults, parse_run_config

GLOBAL = {"w": np.zeros(2), "b": np.zeros(1)}


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a real run, ``Message(...)`` needs the identity a ServerApp would set."""
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


class FakeGrid:
    """Just enough Grid for ``configure_train``: a fixed set of connected nodes, which
    answer a roll call with their partition (``partitions``; unnamed nodes: the node id),
    or with an error (``silent``)."""

    def __init__(
        self,
        nodes: list[int],
        partitions: dict[int, int] | None = None,
        silent: frozenset[int] = frozenset(),
    ) -> None:
        self.nodes = nodes
        self.partitions = partitions or {}
        self.silent = silent
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages: list[Message], *, timeout: float) -> list[Message]:
        answers = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            assert msg.metadata.message_type == MessageType.QUERY
            self.asked.append(node)
            if node in self.silent:
                answers.append(error_reply(node))
                continue
            metrics = MetricRecord({wire.PARTITION_ID: self.partitions.get(node, node)})
            answers.append(make_message(
                metadata=_metadata(node), content=RecordDict({wire.METRICS_RECORD: metrics})))  # fmt: skip
        return answers


def record(arrays: dict[str, Any]) -> ArrayRecord:
    """Arrays as sent: NumPy arrays keep their dtype, lists become float64."""
    return ArrayRecord(
        {k: Array(np.asarray(v, dtype=getattr(v, "dtype", np.float64))) for k, v in arrays.items()}
    )


def reply(node: int, arrays: dict[str, Any], **metrics: Any) -> Message:
    """A train reply from ``node`` following the client reply contract."""
    values: dict[str, Any] = {
        wire.NUM_EXAMPLES: 10,
        wire.TRAIN_LOSS: 1.0,
        wire.TRAIN_ACCURACY: 0.5,
        wire.TRAIN_SECONDS: 1.0,
        wire.EPSILON: 1.0,
        wire.BUDGET_EXHAUSTED: 0,
        wire.GROUP_COUNTS: [5.0, 5.0],
        wire.FAIR_METRIC: 0.1,
    }
    values.update({k.replace("_", "-"): v for k, v in metrics.items()})
    content = RecordDict(
        {wire.ARRAYS_RECORD: record(arrays), wire.METRICS_RECORD: MetricRecord(values)}
    )
    return make_message(metadata=_metadata(node), content=content)


def error_reply(node: int) -> Message:
    return make_message(metadata=_metadata(node), error=Error(code=0, reason="boom"))


def _metadata(node: int) -> Metadata:
    return Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )


def configure(strategy: Any, nodes: list[int], arrays: dict[str, Any] | None = None) -> None:
    sent = strategy.configure_train(
        1, record(arrays or GLOBAL), ConfigRecord(), cast(Grid, FakeGrid(nodes))
    )
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(nodes)


def as_numpy(arrays: ArrayRecord | None) -> dict[str, np.ndarray]:
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}


def two_good_replies() -> list[Message]:
    return [
        reply(1, {"w": [1.0, 2.0], "b": [1.0]}, num_examples=10, train_loss=1.0),
        reply(2, {"w": [3.0, 6.0], "b": [3.0]}, num_examples=30, train_loss=3.0),
    ]


def test_fedavg_weighted_average_of_two_replies() -> None:
    strategy = TracedFedAvg()
    configure(strategy, [1, 2])
    arrays, metrics = strategy.aggregate_train(1, two_good_replies())
    # weights 10/40, 30/40: w = 0.25·(1, 2) + 0.75·(3, 6) = (2.5, 5), b = 2.5
    out = as_numpy(arrays)
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    np.testing.assert_allclose(out["b"], [2.5])
    assert metrics is not None and metrics[wire.TRAIN_LOSS] == pytest.approx(2.5)
    assert strategy.last_round.weights == pytest.approx({1: 0.25, 2: 0.75})


def test_budget_exhausted_skipped_nan_rejected_errors_counted() -> None:
    strategy = TracedFedAvg()
    configure(strategy, [1, 2, 3, 4, 5, 6])
    replies = [
        *two_good_replies(),
        reply(3, GLOBAL, num_examples=1000, budget_exhausted=1),
        reply(4, {"w": [np.nan, 0.0], "b": [0.0]}, num_examples=1000),
        reply(5, {"w": [1.0, 1.0, 1.0], "b": [0.0]}),
        error_reply(6),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(as_numpy(arrays)["w"], [2.5, 5.0])
    trace = strategy.last_round
    assert trace.skipped_budget == [3]
    assert trace.rejected == {
        4: "non-finite values in 'w'",
        5: "shape mismatch for 'w': expected (2,) got (3,)",
    }
    assert trace.failures == 1
    assert set(trace.weights) == {1, 2}
    assert set(trace.client_metrics) == {1, 2, 3, 4, 5}
    assert trace.client_metrics[3][wire.BUDGET_EXHAUSTED] == 1


def test_wrong_keys_and_bad_metrics_are_rejected_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy = TracedFedAvg()
    configure(strategy, [1, 2, 3])
    replies = [reply(1, {"w": [1.0, 1.0]}), reply(2, GLOBAL, num_examples=0)]
    with caplog.at_level("WARNING", logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert (arrays, metrics) == (None, None)
    assert strategy.last_round.rejected == {
        1: "array keys differ from the global model: missing ['b'], unexpected []",
        2: "'num-examples' must be > 0, got 0",
    }
    assert "node 1" in caplog.text and "missing ['b']" in caplog.text


def test_trace_to_json_uses_string_node_ids() -> None:
    trace = RoundTrace(round=2, weights={7: 1.0}, skipped_budget=[8], rejected={9: "x"})
    data = trace.to_json()
    assert data["weights"] == {"7": 1.0}
    assert data["skipped_budget"] == ["8"] and data["rejected"] == {"9": "x"}


def representation_replies() -> list[Message]:
    # The hand-worked example of test_weighting: counts (90,10), (50,50), (0,20).
    return [
        reply(1, {"w": [1.0, 0.0], "b": [0.0]}, num_examples=100, group_counts=[90.0, 10.0]),
        reply(2, {"w": [0.0, 1.0], "b": [0.0]}, num_examples=100, group_counts=[50.0, 50.0]),
        reply(3, {"w": [10.0, 10.0], "b": [0.0]}, num_examples=20, group_counts=[0.0, 20.0]),
    ]


def test_representation_aware_hand_worked() -> None:
    strategy = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    configure(strategy, [1, 2, 3])
    arrays, _ = strategy.aggregate_train(1, representation_replies())
    # weights (43, 55, 12)/110: w = (43 + 120, 55 + 120)/110
    np.testing.assert_allclose(as_numpy(arrays)["w"], [163 / 110, 175 / 110])
    trace = strategy.last_round
    assert trace.weights == pytest.approx({1: 43 / 110, 2: 55 / 110, 3: 12 / 110})
    assert trace.prevalence == pytest.approx({"a": 7 / 11, "b": 4 / 11})
    assert trace.extras["max-weight-ratio"] == pytest.approx(1.2)


def test_representation_sends_its_prevalence_estimate_from_round_two() -> None:
    strategy = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    [first, *_] = strategy.configure_train(
        1, record(GLOBAL), ConfigRecord(), cast(Grid, FakeGrid([1, 2, 3]))
    )
    assert wire.POPULATION_SHARES not in first.content[wire.CONFIG_RECORD]
    strategy.aggregate_train(1, representation_replies())
    [second, *_] = strategy.configure_train(
        2, record(GLOBAL), ConfigRecord(), cast(Grid, FakeGrid([1, 2, 3]))
    )
    assert second.content[wire.CONFIG_RECORD][wire.POPULATION_SHARES] == pytest.approx(
        [7 / 11, 4 / 11]
    )
    resumed = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    resumed.resume_from(1, strategy.checkpoint_state())
    assert resumed.population == pytest.approx([7 / 11, 4 / 11])


def test_representation_rejects_bad_group_counts() -> None:
    strategy = RepresentationAware(alpha=1.0, cap=2.0, group_names=["a", "b"])
    configure(strategy, [1, 2])
    replies = [reply(1, GLOBAL, group_counts=[1.0, 2.0, 3.0]), reply(2, GLOBAL)]
    strategy.aggregate_train(1, replies)
    assert strategy.last_round.rejected == {1: "'group-counts' must list 2 numbers"}
    with pytest.raises(ValueError, match=r"fair\.cap"):
        RepresentationAware(alpha=1.0, cap=0.5, group_names=["a"])


def test_representation_under_central_dp_wrapper() -> None:
    inner = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    dp = DifferentialPrivacyServerSideFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    configure(dp, [1, 2, 3])
    nan = reply(4, {"w": [np.nan, 1.0], "b": [0.0]}, group_counts=[0.0, 1e6])
    arrays, _ = dp.aggregate_train(1, [*representation_replies(), nan])
    # Server-side clipping at norm 1: (10, 10) → (1, 1)/√2; the others have norm 1.
    # Weighted by (43, 55, 12)/110 and zero noise.
    s = 12 / 110 / np.sqrt(2)
    np.testing.assert_allclose(as_numpy(arrays)["w"], [43 / 110 + s, 55 / 110 + s])
    assert inner.last_round.weights == pytest.approx({1: 43 / 110, 2: 0.5, 3: 12 / 110})
    assert inner.last_round.rejected == {4: "non-finite values in 'w'"}  # NaN survives clipping


def test_central_dp_screens_replies_before_flower_clips_them() -> None:
    # Flower clips by array position: without screening, node 5's shape crashes the
    # round and node 2's key order would clip 'w' against 'b'.
    inner = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    dp = ScreenedFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    configure(dp, [1, 2, 3, 5])
    first, _, third = representation_replies()
    reordered = reply(2, {"b": [0.0], "w": [0.0, 1.0]}, num_examples=100, group_counts=[50, 50])
    wrong_shape = reply(5, {"w": [1.0, 0.0, 0.0], "b": [0.0]}, group_counts=[1.0, 1.0])
    arrays, _ = dp.aggregate_train(1, [first, reordered, third, wrong_shape])
    s = 12 / 110 / np.sqrt(2)  # as in the test above: the same three updates
    np.testing.assert_allclose(as_numpy(arrays)["w"], [43 / 110 + s, 55 / 110 + s])
    assert inner.last_round.rejected == {5: "shape mismatch for 'w': expected (2,) got (3,)"}
    assert inner.last_round.failure_reasons == {}  # held back is rejected, not silent


def test_central_dp_round_skipped_for_an_error_reply_gets_its_own_empty_trace() -> None:
    inner = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    dp = ScreenedFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    configure(dp, [1, 2, 3])
    dp.aggregate_train(1, representation_replies())
    assert inner.last_round.round == 1 and len(inner.last_round.weights) == 3
    first, second, _ = representation_replies()
    second.content[wire.CLIENT_RECORD] = ConfigRecord({wire.NODE_ID: "2", wire.EPSILON: 1.5})
    arrays, _ = dp.aggregate_train(2, [first, second, error_reply(3)])
    assert arrays is None  # Flower skips a round with an error reply
    trace = inner.last_round
    assert (trace.round, trace.weights, trace.failures) == (2, {}, 1)  # not round 1's
    assert trace.client_records == {2: {wire.NODE_ID: "2", wire.EPSILON: 1.5}}
    assert trace.skipped.startswith("an error reply")


def test_a_round_central_dp_skips_still_learns_spent_budgets_and_ledger_lengths() -> None:
    inner = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    dp = ScreenedFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    configure(dp, [1, 2, 3])
    spent = reply(2, GLOBAL, budget_exhausted=1)
    spent.content[wire.CLIENT_RECORD] = ConfigRecord(
        {wire.NODE_ID: "2", wire.PARTITION_ID: 7, wire.HISTORY_SIGMA: [1.0, 1.0, 1.0]}
    )
    arrays, _ = dp.aggregate_train(1, [reply(1, GLOBAL), spent, error_reply(3)])
    assert arrays is None
    assert inner.last_round.skipped_budget == [2]
    assert inner.exhausted == {2}  # never sampled again
    assert inner.checkpoint_state()["ledger_events"] == [(7, 3)]  # sent with every request
    assert inner.last_round.skipped  # node 1's reply was accepted: the round was lost
    sent = dp.configure_train(2, record(GLOBAL), ConfigRecord(), cast(Grid, FakeGrid([1, 2, 3])))
    assert sorted(m.metadata.dst_node_id for m in sent) == [1, 3]  # node 2 is no longer drawn
    dp.aggregate_train(2, [reply(1, GLOBAL, budget_exhausted=1), error_reply(3)])
    assert inner.last_round.skipped == ""  # no survivor: a failed round, not a skipped one


def test_central_dp_aggregates_a_round_in_which_a_client_first_runs_out_of_budget() -> None:
    """A spent client sends its weights back unchanged: a zero update, which Flower's
    server-side clipping divides by. It is screened beside the round, as without central DP."""
    inner = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    dp = ScreenedFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    configure(dp, [1, 2, 3, 4, 5])
    spent = reply(4, GLOBAL, budget_exhausted=1)
    spent.content[wire.CLIENT_RECORD] = ConfigRecord(
        {wire.NODE_ID: "4", wire.PARTITION_ID: 7, wire.HISTORY_SIGMA: [1.0, 1.0]}
    )
    idle = reply(5, GLOBAL, group_counts=[1.0, 1.0])  # trained, yet moved nothing
    arrays, _ = dp.aggregate_train(1, [*representation_replies(), spent, idle])
    trace = inner.last_round
    assert arrays is not None and sorted(trace.weights) == [1, 2, 3]
    assert trace.skipped_budget == [4] and inner.exhausted == {4}
    assert inner.checkpoint_state()["ledger_events"] == [(7, 2)]
    assert inner.node_partitions[4] == 7
    assert trace.rejected == {5: UNCHANGED}


def test_central_dp_charges_each_release_when_it_adds_the_noise() -> None:
    inner = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    dp = ScreenedFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    charged: list[dict[int, float]] = []
    dp.charge = lambda weights: charged.append(dict(weights))
    configure(dp, [1, 2, 3])
    dp.aggregate_train(1, representation_replies())
    assert charged == [inner.last_round.weights]
    first, second, _ = representation_replies()
    dp.aggregate_train(2, [first, second, error_reply(3)])  # skipped by Flower: no release
    assert len(charged) == 1


def test_central_dp_keeps_the_privacy_report_of_a_held_back_reply() -> None:
    inner = RepresentationAware(alpha=1.0, cap=1.2, group_names=["a", "b"])
    dp = ScreenedFixedClipping(
        inner, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
    )
    configure(dp, [1, 2, 3, 5])
    wrong_shape = reply(5, {"w": [1.0, 0.0, 0.0], "b": [0.0]})
    wrong_shape.content[wire.CLIENT_RECORD] = ConfigRecord({wire.NODE_ID: "5", wire.EPSILON: 2.0})
    dp.aggregate_train(1, [*representation_replies(), wrong_shape])
    assert inner.last_round.client_records[5] == {wire.NODE_ID: "5", wire.EPSILON: 2.0}


@pytest.mark.parametrize(
    "make", [TracedFedAvg, lambda: TracedQFedAvg(client_learning_rate=1.0, q=1.0)]
)
def test_a_reply_with_other_metric_keys_is_rejected_not_fatal(make: Any) -> None:
    # Flower's q-FedAvg checks that all replies share one key set and ends the run if not.
    strategy = make()
    configure(strategy, [1, 2, 3])
    extra = reply(3, {"w": [5.0, 5.0], "b": [5.0]}, comment=1.0)
    arrays, _ = strategy.aggregate_train(1, [*two_good_replies(), extra])
    assert arrays is not None
    assert strategy.last_round.rejected == {
        3: "metric keys differ from the client contract: missing [], unexpected ['comment']"
    }


def eval_reply(node: int, **metrics: float) -> Message:
    content = RecordDict({wire.METRICS_RECORD: MetricRecord(dict(metrics))})
    return make_message(metadata=_metadata(node), content=content)


def test_an_evaluate_reply_with_other_keys_is_ignored_not_fatal() -> None:
    strategy = TracedFedAvg()
    good = [eval_reply(n, **{wire.NUM_EXAMPLES: 10, wire.EVAL_LOSS: 0.5, wire.EVAL_ACCURACY: a})
            for n, a in ((1, 0.6), (2, 0.8))]  # fmt: skip
    odd = eval_reply(3, **{wire.NUM_EXAMPLES: 10, wire.EVAL_LOSS: 0.5})
    metrics = strategy.aggregate_evaluate(1, [*good, odd, error_reply(4)])
    assert metrics is not None and metrics[wire.EVAL_ACCURACY] == pytest.approx(0.7)


@pytest.mark.parametrize("seconds", [float("nan"), -1.0, None])
def test_reply_without_a_valid_train_seconds_is_rejected(seconds: float | None) -> None:
    strategy = TracedFedAvg()
    configure(strategy, [1, 2])
    bad = reply(2, {"w": [3.0, 6.0], "b": [3.0]})
    metrics = bad.content.metric_records[wire.METRICS_RECORD]
    if seconds is None:
        del metrics[wire.TRAIN_SECONDS]
    else:
        metrics[wire.TRAIN_SECONDS] = seconds
    strategy.aggregate_train(1, [two_good_replies()[0], bad])
    assert list(strategy.last_round.rejected) == [2]
    assert "'train-seconds'" in strategy.last_round.rejected[2]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("fedavg", TracedFedAvg), ("representation", RepresentationAware), ("fairfed", FairFed)],
)
def test_build_strategy_builds_the_named_strategy(name: str, expected: type) -> None:
    strategy = build_strategy(
        parse_run_config(load_defaults() | {"strategy": name, "fair.fairfed-beta": 0.5}),
        ["a", "b"], num_nodes=4,
        train_metrics_aggr_fn=aggregate_metricrecords,
        evaluate_metrics_aggr_fn=aggregate_metricrecords,
    )  # fmt: skip
    assert type(strategy) is expected
    if isinstance(strategy, FairFed):
        assert strategy.beta == 0.5


def test_central_dp_mode_builds_the_screened_wrapper_from_the_dp_keys() -> None:
    cfg = parse_run_config(load_defaults() | {
        "dp.mode": "central", "dp.central-noise": 0.7, "dp.central-clip": 2.5,
        "fraction-train": 0.5})  # fmt: skip
    strategy = build_strategy(
        cfg, ["a", "b"], num_nodes=4,
        train_metrics_aggr_fn=aggregate_metricrecords,
        evaluate_metrics_aggr_fn=aggregate_metricrecords,
    )  # fmt: skip
    assert isinstance(strategy, ScreenedFixedClipping)
    assert (strategy.noise_multiplier, strategy.clipping_norm) == (0.7, 2.5)
    assert strategy.num_sampled_clients == 2  # half of 4 nodes
    assert strategy.accountant is None  # ours: server/central_accountant.py (see next test)
    assert type(strategy.strategy) is RepresentationAware


def test_flowers_central_dp_accountant_refuses_weighted_strategies() -> None:
    """Pins the dependency behaviour that makes server/central_accountant.py account instead."""
    accountant = SimpleNamespace(
        config=SimpleNamespace(sampling_method=SamplingMethod.NO_AMPLIFICATION)
    )
    inner = RepresentationAware(alpha=1.0, cap=2.0, group_names=["a"])
    with pytest.raises(ValueError, match=r"FedAvg\.aggregate_train"):
        DifferentialPrivacyServerSideFixedClipping(
            inner, 1.0, 1.0, 3, accountant=cast(Any, accountant)
        )


def test_fairfed_two_rounds_by_hand() -> None:
    strategy = FairFed(beta=1.0)
    configure(strategy, [1, 2, 3])
    n = {1: 100, 2: 100, 3: 200}

    def replies(fair: dict[int, float], w3: float) -> list[Message]:
        return [
            reply(
                k,
                {"w": [w3 if k == 3 else 0.0, 0.0], "b": [0.0]},
                num_examples=n[k],
                fair_metric=fair[k],
            )
            for k in (1, 2, 3)
        ]

    # Round 1: F = (.1, .3, .2), F_global = .2, Δ = (.1, .1, 0) → (13, 13, 34)/60.
    arrays, _ = strategy.aggregate_train(1, replies({1: 0.1, 2: 0.3, 3: 0.2}, 60.0))
    assert strategy.last_round.weights == pytest.approx({1: 13 / 60, 2: 13 / 60, 3: 34 / 60})
    assert strategy.last_round.extras["fair-global-metric"] == pytest.approx(0.2)
    np.testing.assert_allclose(as_numpy(arrays)["w"], [34.0, 0.0])
    # Round 2: F = (0, .4, .3), F_global = (0 + 40 + 60)/400 = .25, Δ = (.25, .15, .05),
    # mean .15 → w = (13/60 - .1, 13/60, 34/60 + .1) = (7, 13, 40)/60.
    configure(strategy, [1, 2, 3])
    strategy.aggregate_train(2, replies({1: 0.0, 2: 0.4, 3: 0.3}, 60.0))
    assert strategy.last_round.weights == pytest.approx({1: 7 / 60, 2: 13 / 60, 3: 40 / 60})
    assert strategy.last_round.extras["fair-global-metric"] == pytest.approx(0.25)


def test_fairfed_keeps_relative_weights_when_participants_change() -> None:
    strategy = FairFed(beta=1.0)
    n = {1: 100, 2: 100, 3: 200, 4: 100}

    def replies(nodes: list[int], fair: dict[int, float]) -> list[Message]:
        return [
            reply(k, {"w": [0.0, 0.0], "b": [0.0]}, num_examples=n[k], fair_metric=fair[k])
            for k in nodes
        ]

    configure(strategy, [1, 2, 3])
    strategy.aggregate_train(1, replies([1, 2, 3], {1: 0.1, 2: 0.3, 3: 0.2}))
    assert strategy.last_round.weights == pytest.approx({1: 13 / 60, 2: 13 / 60, 3: 34 / 60})
    # Factors w/FedAvg: (13/60)/(1/4) = 52/60 for 1 and 2, (34/60)/(1/2) = 68/60 for 3.
    # Node 2 drops out, node 4 joins (factor 1); equal metrics, so Δ = 0, no update.
    # FedAvg of {1, 3, 4} = (1/4, 1/2, 1/4) × factors = (13, 34, 15)/60 → /62.
    configure(strategy, [1, 3, 4])
    strategy.aggregate_train(2, replies([1, 3, 4], {1: 0.2, 3: 0.2, 4: 0.2}))
    assert strategy.last_round.weights == pytest.approx({1: 13 / 62, 3: 34 / 62, 4: 15 / 62})
    # No update, so no factor moved: node 4 gained nothing from being drawn with 1 and 3,
    # and meets node 2 as an equal (FedAvg of {2, 4} × factors (52/60, 1) = (13, 15)/28).
    assert strategy.node_factors[4] == pytest.approx(1.0)
    configure(strategy, [2, 4])
    strategy.aggregate_train(3, replies([2, 4], {2: 0.2, 4: 0.2}))
    assert strategy.last_round.weights == pytest.approx({2: 13 / 28, 4: 15 / 28})


def test_fairfed_factors_all_at_zero_start_again_from_fedavg() -> None:
    strategy = FairFed(beta=1.0)
    strategy.node_factors = {1: 0.0, 2: 0.0}  # every participant pushed down to 0 before
    configure(strategy, [1, 2])
    strategy.aggregate_train(1, [reply(k, {"w": [0.0, 0.0], "b": [0.0]}, num_examples=100,
                                       fair_metric=0.2) for k in (1, 2)])  # fmt: skip
    assert strategy.last_round.weights == pytest.approx({1: 0.5, 2: 0.5})
    assert strategy.node_factors == pytest.approx({1: 1.0, 2: 1.0})  # not stuck at 0


def test_fairfed_beta_zero_is_fedavg_whoever_takes_part() -> None:
    strategy = FairFed(beta=0.0)
    n = {1: 10, 2: 90, 3: 10}
    for server_round, nodes in enumerate(([1, 2], [1, 3], [1, 2, 3]), start=1):
        configure(strategy, nodes)
        strategy.aggregate_train(
            server_round,
            [
                reply(k, {"w": [0.0, 0.0], "b": [0.0]}, num_examples=n[k], fair_metric=0.1 * k)
                for k in nodes
            ],
        )
        total = sum(n[k] for k in nodes)
        assert strategy.last_round.weights == pytest.approx({k: n[k] / total for k in nodes})


def test_traced_qfedavg_by_hand() -> None:
    strategy = TracedQFedAvg(client_learning_rate=1.0, q=1.0)
    global_ = {"a": [0.0], "b": [0.0]}
    configure(strategy, [1, 2, 3, 4], global_)
    # node 2 sends its keys in the other order: aggregation must go by key, not order.
    replies = [
        reply(1, {"a": [1.0], "b": [0.0]}, train_loss=1.0),
        reply(2, {"b": [2.0], "a": [0.0]}, train_loss=2.0),
        reply(3, global_, train_loss=5.0, budget_exhausted=1),
        reply(4, {"a": [np.inf], "b": [0.0]}, train_loss=1.0),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    # L = 1, q = 1: h = (1 + 1, 4 + 2), Σh = 8 → w = 1/8·(1, 0) + 2/8·(0, 2) = (.125, .5)
    out = as_numpy(arrays)
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [0.125, 0.5])
    trace = strategy.last_round
    assert trace.weights == pytest.approx({1: 1 / 3, 2: 2 / 3})
    assert trace.extras["qfedavg-step-scale"] == pytest.approx(3 / 8)
    assert trace.skipped_budget == [3] and trace.rejected == {4: "non-finite values in 'a'"}


def test_qfedavg_keeps_the_global_dtype_so_the_next_round_is_accepted() -> None:
    # Flower's q-FedAvg step returns float64 arrays; a float32 model must stay float32, or
    # every float32 reply of the next round would be rejected as a dtype mismatch.
    strategy = TracedQFedAvg(client_learning_rate=1.0, q=1.0)
    as32 = {"a": np.zeros(2, dtype=np.float32), "b": np.zeros(1, dtype=np.float32)}
    for server_round in (1, 2):
        configure(strategy, [1, 2], as32)
        replies = [reply(node, {k: v + node for k, v in as32.items()}) for node in (1, 2)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert strategy.last_round.rejected == {}
        assert arrays is not None
        as32 = {k: arrays[k].numpy() for k in as32}
        assert {v.dtype for v in as32.values()} == {np.dtype(np.float32)}


def test_qfedavg_lipschitz_comes_from_its_own_learning_rate() -> None:
    # L = 1/lr must not follow train.learning-rate: under AdamW (1e-3) L = 1000 shrank the
    # step to 0.2 % of the average update (measured), so q-FedAvg never left the start.
    raw = load_defaults() | {
        "strategy": "qfedavg",
        "train.learning-rate": 0.001,
        "qfedavg.learning-rate": 20.0,
    }
    strategy = build_strategy(
        parse_run_config(raw),
        ["a", "b"],
        num_nodes=4,
        train_metrics_aggr_fn=aggregate_metricrecords,
        evaluate_metrics_aggr_fn=aggregate_metricrecords,
    )
    assert isinstance(strategy, TracedQFedAvg)
    assert strategy.client_learning_rate == 20.0


def test_federated_evaluation_samples_fraction_evaluate_of_the_nodes() -> None:
    cfg = parse_run_config(load_defaults() | {"fraction-train": 0.1, "fraction-evaluate": 0.2})
    strategy = build_strategy(
        cfg, ["a", "b"], num_nodes=50,
        train_metrics_aggr_fn=aggregate_metricrecords,
        evaluate_metrics_aggr_fn=aggregate_metricrecords,
    )  # fmt: skip
    sent = strategy.configure_evaluate(1, record(GLOBAL), ConfigRecord(),
                                       cast(Grid, FakeGrid(list(range(1, 51)))))  # fmt: skip
    assert len(list(sent)) == 10


@pytest.mark.parametrize("central", [False, True])
def test_clients_evaluate_the_model_the_server_reports(central: bool) -> None:
    raw = load_defaults() | ({"dp.mode": "central"} if central else {})
    strategy = build_strategy(
        parse_run_config(raw), ["a", "b"], num_nodes=2,
        train_metrics_aggr_fn=aggregate_metricrecords,
        evaluate_metrics_aggr_fn=aggregate_metricrecords,
    )  # fmt: skip
    reported = record({k: [v + 1.0 for v in values] for k, values in GLOBAL.items()})
    strategy.evaluation_model = lambda arrays: reported
    sent = list(strategy.configure_evaluate(1, record(GLOBAL), ConfigRecord(),
                                            cast(Grid, FakeGrid([1, 2]))))  # fmt: skip
    assert len(sent) == 2
    for message in sent:
        arrays = message.content.array_records["arrays"]
        assert {k: a.numpy().tolist() for k, a in arrays.items()} == {
            k: a.numpy().tolist() for k, a in reported.items()
        }
