"""The server remembers how long each partition's privacy ledger was at its last reply and
sends it with every request, so a node that lost its ledger cannot start again from ε = 0."""

from __future__ import annotations

from typing import cast

import pytest
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from clients import ledger_store
from task import wire
from tests.strategies.test_exhausted_nodes import _strategy
from tests.strategies.test_strategies import GLOBAL, FakeGrid, record, reply, server_identity

__all__ = ["server_identity"]


def _with_report(msg: Message, partition: int, events: int) -> Message:
    msg.content[wire.CLIENT_RECORD] = ConfigRecord(
        {wire.PARTITION_ID: partition, wire.HISTORY_SIGMA: [1.0] * events}
    )
    return msg


def _train_config(strategy: object, server_round: int, nodes: list[int]) -> ConfigRecord:
    sent = list(strategy.configure_train(  # type: ignore[attr-defined]
        server_round, record(GLOBAL), ConfigRecord(), cast(Grid, FakeGrid(nodes))))  # fmt: skip
    return sent[0].content.config_records[wire.CONFIG_RECORD]


@pytest.mark.parametrize("name", ["fedavg", "representation", "fairfed", "qfedavg"])
def test_each_partitions_ledger_length_goes_out_with_the_next_request(name: str) -> None:
    strategy = _strategy(name, "local", 1.0, 3)
    first = _train_config(strategy, 1, [1, 2, 3])
    assert wire.SPENT_PARTITIONS not in first  # nothing spent yet: nothing to compare with
    replies = [_with_report(reply(n, {"w": [0.1, 0.2], "b": [0.1]}), n + 10, 2 * n)
               for n in (1, 2, 3)]  # fmt: skip
    strategy.aggregate_train(1, replies)
    config = _train_config(strategy, 2, [1, 2, 3])
    assert config[wire.SPENT_PARTITIONS] == [11, 12, 13]
    assert config[wire.SPENT_EVENTS] == [2, 4, 6]
    assert ledger_store.recorded_events(config, 12) == 4
    assert ledger_store.recorded_events(config, 99) == 0  # a partition never heard from

    resumed = _strategy(name, "local", 1.0, 3)  # the record survives a checkpoint + resume
    resumed.resume_from(1, strategy.checkpoint_state())
    assert resumed.ledger_events == {11: 2, 12: 4, 13: 6}


def test_a_shorter_report_never_lowers_the_record() -> None:
    strategy = _strategy("fedavg", "local", 1.0, 2)
    for server_round, events in ((1, 5), (2, 0)):  # a node that restarted empty says 0
        _train_config(strategy, server_round, [1, 2])
        replies = [_with_report(reply(n, {"w": [0.1, 0.2], "b": [0.1]}), n, events)
                   for n in (1, 2)]  # fmt: skip
        strategy.aggregate_train(server_round, replies)
    assert strategy.ledger_events == {1: 5, 2: 5}
