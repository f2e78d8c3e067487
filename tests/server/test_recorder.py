"""RoundRecorder: the privacy report covers every client that spent ε, accepted or not."""

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server import checkpoint
from server.evaluation import GlobalEvaluator
from server.recorder import RoundRecorder
from server.records import RunDirectory
from strategies.base import TracedFedAvg
from task import wire
from tests.strategies.test_strategies import GLOBAL, configure, record, reply


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


class FixedEvaluator:
    """Global metrics are not under test here: a fixed report."""

    def evaluate(self, weights: Any) -> dict[str, Any]:
        return {"accuracy": 0.5, "balanced_accuracy": 0.5, "worst_group_accuracy": 0.5,
                "group_accuracy_gap": 0.0}  # fmt: skip


def private_reply(node: int, arrays: dict[str, Any], epsilon: float, **record: Any) -> Message:
    message = reply(node, arrays, epsilon=epsilon)
    fields: dict[str, Any] = {
        wire.NODE_ID: str(node), wire.BYTES_SENT: 24, wire.EPSILON: epsilon, wire.DELTA: 1e-5,
        wire.BUDGET_EPSILON: 8.0, wire.ACCOUNTANT: "rdp", wire.NOISE_MULTIPLIER: 1.1,
        wire.HISTORY_SIGMA: [1.1], wire.HISTORY_Q: [0.1], wire.HISTORY_STEPS: [10],
        wire.BUDGET_EXHAUSTED: False,
    }  # fmt: skip
    message.content[wire.CLIENT_RECORD] = ConfigRecord(fields | record)
    return message


def test_a_rejected_reply_still_reports_the_epsilon_its_client_spent(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path, "1", {})
    evaluator = cast(GlobalEvaluator, FixedEvaluator())
    recorder = RoundRecorder(run_dir, evaluator, num_rounds=1)
    strategy = TracedFedAvg(train_metrics_aggr_fn=recorder.aggregate_train_metrics)
    recorder.watch(strategy)
    configure(strategy, [1, 2, 3])
    replies = [
        private_reply(1, {"w": [1.0, 2.0], "b": [1.0]}, 2.0),
        private_reply(2, {"w": [np.nan, 0.0], "b": [0.0]}, 3.5),  # trained, then rejected
        private_reply(3, GLOBAL, 4.0, **{wire.HISTORY_STEPS: "ten"}),  # malformed report
    ]
    strategy.aggregate_train(1, replies)
    recorder.evaluate(1, record(GLOBAL))
    results = json.loads((run_dir.path / "results.json").read_text())
    assert strategy.last_round.rejected == {2: "non-finite values in 'w'"}
    assert {node: p["epsilon"] for node, p in results["privacy"].items()} == {"1": 2.0, "2": 3.5}
    assert results["final"]["max_epsilon"] == 3.5


def test_a_reply_with_other_metric_shapes_does_not_crash_the_round(tmp_path: Path) -> None:
    # Flower's aggregate_metricrecords zips lists strictly: 3 group counts against 2 crashed.
    run_dir = RunDirectory(tmp_path, "1", {})
    recorder = RoundRecorder(run_dir, cast(GlobalEvaluator, FixedEvaluator()), num_rounds=1)
    strategy = TracedFedAvg(train_metrics_aggr_fn=recorder.aggregate_train_metrics)
    recorder.watch(strategy)
    configure(strategy, [1, 2])
    replies = [
        reply(1, {"w": [1.0, 2.0], "b": [1.0]}, num_examples=10, train_loss=1.0),
        reply(2, {"w": [3.0, 6.0], "b": [3.0]}, num_examples=30, group_counts=[1.0, 2.0, 3.0]),
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and wire.GROUP_COUNTS not in metrics
    assert metrics[wire.TRAIN_LOSS] == pytest.approx(0.25 * 1.0 + 0.75 * 1.0)
    recorder.evaluate(1, record(GLOBAL))
    assert recorder.rounds[0]["weights"] == {"1": 0.25, "2": 0.75}


def test_invalid_eval_accuracies_are_left_out_of_the_client_spread(tmp_path: Path) -> None:
    recorder = RoundRecorder(
        RunDirectory(tmp_path, "1", {}), cast(GlobalEvaluator, FixedEvaluator()), num_rounds=1
    )
    contents = [
        RecordDict({"m": MetricRecord({wire.NUM_EXAMPLES: 10, wire.EVAL_ACCURACY: a})})
        for a in (0.8, float("nan"), 1.5, 0.6)
    ]
    recorder.aggregate_eval_metrics(contents, wire.NUM_EXAMPLES)
    recorder.evaluate(1, record(GLOBAL))
    assert recorder.rounds[0]["clients"]["mean_accuracy"] == pytest.approx(0.7)


def test_a_round_the_strategy_did_not_aggregate_reports_no_stale_weights(tmp_path: Path) -> None:
    recorder = RoundRecorder(
        RunDirectory(tmp_path, "1", {}), cast(GlobalEvaluator, FixedEvaluator()), num_rounds=2
    )
    strategy = TracedFedAvg(train_metrics_aggr_fn=recorder.aggregate_train_metrics)
    recorder.watch(strategy)
    configure(strategy, [1, 2])
    strategy.aggregate_train(1, [reply(1, {"w": [1.0, 2.0], "b": [1.0]})])
    recorder.evaluate(1, record(GLOBAL))
    recorder.evaluate(2, record(GLOBAL))  # round 2: aggregate_train was never called
    assert recorder.rounds[0]["weights"] == {"1": 1.0}
    assert recorder.rounds[1]["weights"] == {}


def test_results_exist_from_round_0_with_the_contracts_keys(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path, "1", {"seed": 1})
    recorder = RoundRecorder(run_dir, cast(GlobalEvaluator, FixedEvaluator()), num_rounds=1)
    recorder.extra["num_nodes"] = 3
    recorder.evaluate(0, record(GLOBAL))  # a stop now must not lose the baseline
    results = json.loads((run_dir.path / "results.json").read_text())
    assert results["status"] == "running" and results["rounds"] == []
    assert results["initial"]["accuracy"] == 0.5 and results["num_nodes"] == 3
    assert results["final"] == {"max_epsilon": None}


def test_the_last_round_is_complete_only_once_its_checkpoint_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = RunDirectory(tmp_path, "1", {})
    recorder = RoundRecorder(run_dir, cast(GlobalEvaluator, FixedEvaluator()), num_rounds=1)
    recorder.evaluate(0, record(GLOBAL))

    def disk_full(*_: object) -> None:
        raise OSError("No space left on device")

    with monkeypatch.context() as patched, pytest.raises(OSError):
        patched.setattr(checkpoint, "save", disk_full)
        recorder.evaluate(1, record(GLOBAL))
    results = json.loads((run_dir.path / "results.json").read_text())
    assert results["status"] == "running" and len(results["rounds"]) == 1
    assert not (tmp_path / "latest").exists()
    # the same round with its checkpoint saved
    saved = RunDirectory(tmp_path / "saved", "1", {})
    recorder = RoundRecorder(saved, cast(GlobalEvaluator, FixedEvaluator()), num_rounds=1)
    strategy = TracedFedAvg(train_metrics_aggr_fn=recorder.aggregate_train_metrics)
    recorder.watch(strategy)
    configure(strategy, [1, 2])
    recorder.evaluate(0, record(GLOBAL))
    strategy.aggregate_train(1, [reply(1, {"w": [1.0, 2.0], "b": [1.0]})])
    recorder.evaluate(1, record(GLOBAL))
    assert json.loads((saved.path / "results.json").read_text())["status"] == "complete"
    assert (tmp_path / "saved" / "latest").resolve() == saved.path
