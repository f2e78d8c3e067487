"""Seeded client sampling over partitions: the same clients whatever node ids Flower drew,
in a resumed run too (strategies/sampling.py)."""

from __future__ import annotations

from typing import Any, cast

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from strategies import build_strategy
from strategies.sampling import partition_in
from task import wire
from task.config import load_defaults, parse_run_config
from tests.strategies.test_strategies import (
    GLOBAL,
    FakeGrid,
    error_reply,
    record,
    reply,
    server_identity,
)

__all__ = ["server_identity"]  # the fixture, used by every test here

NUM_NODES = 10


def _strategy(seed: int, **keys: Any) -> Any:
    cfg = parse_run_config(load_defaults() | {
        "seed": seed, "fraction-train": 0.3, "fraction-evaluate": 0.5, **keys})  # fmt: skip
    return build_strategy(
        cfg, ["a", "b"], num_nodes=NUM_NODES,
        train_metrics_aggr_fn=aggregate_metricrecords,
        evaluate_metrics_aggr_fn=aggregate_metricrecords,
    )  # fmt: skip


def _federation(first_id: int, step: int) -> FakeGrid:
    """NUM_NODES nodes under ids of their own, holding partitions 0..NUM_NODES-1."""
    nodes = [first_id + step * p for p in range(NUM_NODES)]
    return FakeGrid(nodes[::-1], partitions={n: p for p, n in enumerate(nodes)})


def _partitions(sent: list[Message], grid: FakeGrid) -> list[int]:
    return sorted(grid.partitions[m.metadata.dst_node_id] for m in sent)


def _round(
    strategy: Any, server_round: int, grid: FakeGrid, spent: frozenset[int] = frozenset()
) -> tuple:
    """Train and evaluate draws of one round (as partitions); ``spent`` partitions say
    their budget is spent."""
    train = list(strategy.configure_train(
        server_round, record(GLOBAL), ConfigRecord(), cast(Grid, grid)))  # fmt: skip
    replies = []
    for msg in train:
        partition = grid.partitions[node := msg.metadata.dst_node_id]
        answer = reply(node, {"w": [0.1, 0.2], "b": [0.1]},
                       budget_exhausted=int(partition in spent))  # fmt: skip
        answer.content[wire.CLIENT_RECORD] = ConfigRecord({wire.PARTITION_ID: partition})
        replies.append(answer)
    strategy.aggregate_train(server_round, replies)
    evaluate = list(strategy.configure_evaluate(
        server_round, record(GLOBAL), ConfigRecord(), cast(Grid, grid)))  # fmt: skip
    return _partitions(train, grid), _partitions(evaluate, grid)


def test_a_seed_draws_the_same_clients_whatever_their_node_ids() -> None:
    draws = []
    for first_id, step in ((1_000, 1), (987_654_321, -7_777)):
        strategy, grid = _strategy(seed=5), _federation(first_id, step)
        draws.append([_round(strategy, r, grid) for r in range(1, 6)])
        assert sorted(grid.asked) == sorted(grid.nodes)  # each node asked once, in round 1
    assert draws[0] == draws[1]
    assert all(len(train) == 3 and len(evaluate) == 5 for train, evaluate in draws[0])
    other = _strategy(seed=6)
    grid = _federation(1_000, 1)
    assert [_round(other, r, grid) for r in range(1, 6)] != draws[0]


def test_a_resumed_run_draws_as_the_uninterrupted_one_and_skips_spent_clients() -> None:
    spent = frozenset(range(7))  # every partition drawn by round 2 says its budget is spent
    whole, grid = _strategy(seed=3), _federation(1_000, 1)
    rounds = [_round(whole, r, grid, spent) for r in range(1, 3)]
    assert {p for train, _ in rounds for p in train} & spent  # some did spend it
    state = whole.checkpoint_state()
    rest = [_round(whole, r, grid, spent) for r in range(3, 6)]

    resumed, new_grid = _strategy(seed=3), _federation(55_555, 13)
    resumed.resume_from(2, state)
    resumed_rest = [_round(resumed, r, new_grid, spent) for r in range(1, 4)]
    assert resumed_rest == rest
    exhausted = set(state["exhausted_partitions"])
    assert not set(resumed_rest[0][0]) & exhausted  # its first draw already skips them


def test_a_node_that_does_not_answer_the_roll_call_is_drawn_by_node_id_and_not_asked_again() -> (
    None
):
    strategy, grid = (
        _strategy(seed=1),
        FakeGrid(list(range(1, NUM_NODES + 1)), silent=frozenset({4})),
    )
    for server_round in (1, 2):
        strategy.configure_train(server_round, record(GLOBAL), ConfigRecord(), cast(Grid, grid))
    assert grid.asked.count(4) == 1 and len(grid.asked) == NUM_NODES


def test_a_roll_call_answer_must_name_a_partition() -> None:
    grid = FakeGrid([1, 2, 3, 4], partitions={1: 0, 2: -1, 3: 2.0})  # type: ignore[dict-item]
    grid.silent = frozenset({4})
    answers = grid.send_and_receive(
        [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in grid.nodes],
        timeout=1.0,
    )
    assert [partition_in(a) for a in answers] == [0, None, None, None]
    assert partition_in(error_reply(5)) is None


def test_a_resumed_run_with_every_client_a_round_still_skips_spent_clients() -> None:
    """With ``fraction-train = 1`` nothing is drawn, so no roll call maps partitions to
    the resumed run's new node ids, unless some partitions are known to be spent."""
    whole, grid = _strategy(seed=3, **{"fraction-train": 1.0}), _federation(1_000, 1)
    _round(whole, 1, grid, spent=frozenset({2, 5}))
    state = whole.checkpoint_state()
    assert state["exhausted_partitions"] == [2, 5]
    resumed, new_grid = _strategy(seed=3, **{"fraction-train": 1.0}), _federation(55_555, 13)
    resumed.resume_from(1, state)
    train, _ = _round(resumed, 1, new_grid)
    assert train == [p for p in range(NUM_NODES) if p not in (2, 5)]
