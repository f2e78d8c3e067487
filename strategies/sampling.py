"""Which nodes a round asks: a seeded draw over partitions, not over node ids.

Flower draws a node id at random at every registration (each SuperNode's start, each
simulation, a resumed run) and samples with the unseeded module-level ``random``, so with
``fraction-train < 1`` a seeded run picked other clients every time, the in-process engine
others than ``flwr run``, and a resumed run others than the run it continues (it also
could not exclude clients whose budget was spent until they replied again). Here the
strategy draws with its own ``random.Random(seed)``, checkpointed, over the nodes in
partition order; where a draw picks some nodes of many, it first asks the nodes whose
partition it does not know yet (a *roll call*: a query message the ClientApp answers from
its node-config, reading no data and spending no budget).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies.screening import metrics_of
from task.wire import PARTITION_ID


def round_size(num_nodes: int, fraction: float, minimum: int = 1) -> int:
    """Nodes a round draws: FedAvg's ``fraction`` of all, at least ``minimum`` (what the
    central accountant sizes its noise for, too)."""
    return max(int(num_nodes * fraction), minimum)


def roll_call(grid: Grid, nodes: Iterable[int], timeout: float) -> dict[int, int]:
    """Ask ``nodes`` which partition each holds; return the valid answers by node.

    It waits up to ``timeout`` (the run's ``round-timeout``: about 5 ms a node in
    simulation once Ray's actors are up). A node that does not answer in time is not asked
    again; it is drawn as a node of unknown partition (before the known ones, by node id)
    until a train reply names its partition."""
    nodes = list(nodes)
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    answers: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        partition = partition_in(reply)
        if partition is not None:
            answers[reply.metadata.src_node_id] = partition
    if missing := sorted(set(nodes) - set(answers)):
        log(WARNING, "roll call: no valid partition-id from nodes %s; drawn by node id", missing)
    return answers


def partition_in(reply: Message) -> int | None:
    """The partition a roll-call reply names, or None if it is an error or malformed."""
    if reply.has_error() or len(reply.content.metric_records) != 1:
        return None
    value = metrics_of(reply.content).get(PARTITION_ID)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def rng_state(rng: random.Random) -> list[Any]:
    """``rng``'s state as JSON-able lists (the checkpoint's state document is JSON)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list[Any]) -> None:
    """Restore ``rng`` to a state of :func:`rng_state`."""
    rng.setstate((state[0], tuple(state[1]), state[2]))
