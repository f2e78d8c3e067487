"""The reported model: the moving average of the aggregates, by hand, and through a resume."""

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from server import checkpoint
from server.evaluation import GlobalEvaluator
from server.model_average import ModelAverage
from server.recorder import RoundRecorder
from server.records import RunDirectory
from tests.server.test_recorder import FixedEvaluator
from tests.strategies.test_strategies import record


def test_the_average_starts_at_the_first_aggregate_and_blends_each_next_one() -> None:
    average = ModelAverage(0.5)
    first = average.update({"w": np.array([2.0, 4.0], dtype=np.float32)})
    np.testing.assert_array_equal(first["w"], [2.0, 4.0])
    second = average.update({"w": np.array([4.0, 0.0], dtype=np.float32)})
    np.testing.assert_array_equal(second["w"], [3.0, 2.0])  # 0.5·(2, 4) + 0.5·(4, 0)
    third = average.update({"w": np.array([1.0, 2.0], dtype=np.float32)})
    np.testing.assert_array_equal(third["w"], [2.0, 2.0])
    assert third["w"].dtype == np.float32


def test_decay_zero_reports_the_latest_aggregate_and_integers_are_not_averaged() -> None:
    latest = ModelAverage(0.0)
    latest.update({"w": np.array([1.0])})
    np.testing.assert_array_equal(latest.update({"w": np.array([5.0])})["w"], [5.0])
    mixed = ModelAverage(0.9)
    mixed.update({"w": np.array([0.0]), "ids": np.array([1, 2])})
    out = mixed.update({"w": np.array([10.0]), "ids": np.array([3, 4])})
    np.testing.assert_allclose(out["w"], [1.0])
    np.testing.assert_array_equal(out["ids"], [3, 4])


def test_a_decay_outside_zero_to_one_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"ema-decay.*\[0, 1\)"):
        ModelAverage(1.0)


def test_an_aggregate_of_another_model_is_refused_not_averaged() -> None:
    average = ModelAverage(0.5)
    average.update({"w": np.zeros(2)})
    with pytest.raises(ValueError, match="'w'.*shape"):
        average.update({"w": np.zeros(3)})
    with pytest.raises(ValueError, match="arrays"):
        average.update({"v": np.zeros(2)})
    with pytest.raises(ValueError, match="'w'.*shape"):
        average.restore({"w": np.zeros(3)}, like={"w": np.zeros(2)})


class WeightsSeen(FixedEvaluator):
    """The fixed report, keeping the weights it was asked to evaluate."""

    def __init__(self) -> None:
        self.seen: list[dict[str, np.ndarray]] = []

    def evaluate(self, weights: dict[str, Any]) -> dict[str, Any]:
        self.seen.append({k: v.numpy().copy() for k, v in weights.items()})
        return super().evaluate(weights)


def test_the_recorder_evaluates_the_average_and_a_resumed_run_continues_it(
    tmp_path: Path,
) -> None:
    run_dir = RunDirectory(tmp_path, "1", {})
    seen = WeightsSeen()
    recorder = RoundRecorder(run_dir, cast(GlobalEvaluator, seen), num_rounds=3, ema_decay=0.75)
    recorder.evaluate(1, record({"w": [4.0]}))
    recorder.evaluate(2, record({"w": [8.0]}))
    assert [s["w"].tolist() for s in seen.seen] == [[4.0], [5.0]]  # 0.75·4 + 0.25·8
    saved = checkpoint.load(run_dir.path)
    assert saved.arrays["w"].tolist() == [8.0]  # clients go on from the aggregate
    assert saved.averaged is not None and saved.averaged["w"].tolist() == [5.0]

    resumed_seen = WeightsSeen()
    resumed = RoundRecorder(
        RunDirectory.reopen(str(run_dir.path), saved.state["rounds"]),
        cast(GlobalEvaluator, resumed_seen), num_rounds=3, ema_decay=0.75,
    )  # fmt: skip
    resumed.resume_from(saved)
    resumed.evaluate(1, record({"w": [1.0]}))  # the run's round 3
    assert resumed_seen.seen[0]["w"].tolist() == [4.0]  # 0.75·5 + 0.25·1


def test_round_zero_does_not_seed_the_average_and_a_round_without_aggregate_is_not_folded_twice(
    tmp_path: Path,
) -> None:
    seen = WeightsSeen()
    recorder = RoundRecorder(
        RunDirectory(tmp_path, "1", {}), cast(GlobalEvaluator, seen), num_rounds=4,
        ema_decay=0.5,
    )  # fmt: skip
    initial = record({"w": [0.0]})
    recorder.evaluate(0, initial)  # the baseline: evaluated, not averaged
    recorder.evaluate(1, initial)  # round 1 aggregated nothing: Flower passes the same record
    first = record({"w": [4.0]})
    recorder.evaluate(2, first)
    recorder.evaluate(3, first)  # skipped again: the average stays as it was
    recorder.evaluate(4, record({"w": [8.0]}))
    assert [s["w"].tolist() for s in seen.seen] == [[0.0], [0.0], [4.0], [4.0], [6.0]]


def test_without_averaging_the_checkpoint_keeps_no_second_copy(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path, "1", {})
    recorder = RoundRecorder(run_dir, cast(GlobalEvaluator, WeightsSeen()), num_rounds=1)
    recorder.evaluate(1, record({"w": [3.0]}))
    assert checkpoint.load(run_dir.path).averaged is None


def test_clients_evaluate_the_reported_average_and_it_is_folded_in_once(tmp_path: Path) -> None:
    seen = WeightsSeen()
    recorder = RoundRecorder(
        RunDirectory(tmp_path, "1", {}), cast(GlobalEvaluator, seen), num_rounds=2,
        ema_decay=0.5,
    )  # fmt: skip
    for server_round, value in ((1, 2.0), (2, 6.0)):
        aggregate = record({"w": [value]})
        # Flower's order: configure_evaluate, then evaluate_fn, with the same record
        sent = recorder.reported_arrays(aggregate)
        recorder.evaluate(server_round, aggregate)
        assert sent["w"].numpy().tolist() == seen.seen[-1]["w"].tolist()
    assert [s["w"].tolist() for s in seen.seen] == [[2.0], [4.0]]  # 0.5·2 + 0.5·6


def test_without_averaging_clients_evaluate_the_aggregate_itself(tmp_path: Path) -> None:
    recorder = RoundRecorder(RunDirectory(tmp_path, "1", {}), cast(GlobalEvaluator, WeightsSeen()),
                             num_rounds=1)  # fmt: skip
    aggregate = record({"w": [3.0]})
    assert recorder.reported_arrays(aggregate) is aggregate
