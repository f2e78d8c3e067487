"""Collect a round's replies as they arrive, not on Flower's fixed polling period.

Flower 1.42's grids implement ``send_and_receive`` as push, then pull-and-sleep until every
reply is in: 0.1 s between pulls in simulation (``InMemoryGrid.pull_interval``), 3 s in
deployment (``HttpGrid``, hard-coded). A round has two such waits (train and evaluate), so
a steady simulated round, about 0.25 s of work in the default experiment, spent up to
0.2 s more waiting, and a deployed one up to 6 s.

:class:`PromptGrid` wraps the grid the ServerApp is given and pulls after a pause of a
tenth of the time waited so far, between 5 ms and 1 s: a reply is picked up at most about
10 % late, at about 60 pulls for a 10-second phase. Every other call goes to the wrapped
grid unchanged; it uses only the public :class:`~flwr.serverapp.Grid` interface.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import HttpGrid, InMemoryGrid

#: Flower's grids whose ``send_and_receive`` sleeps a fixed period between pulls
FIXED_PERIOD_GRIDS = (InMemoryGrid, HttpGrid)
SHORTEST_PAUSE_S = 0.005
LONGEST_PAUSE_S = 1.0


def prompt(grid: Grid) -> Grid:
    """``grid`` wrapped in a :class:`PromptGrid` if it is one of Flower's fixed-period
    grids; any other grid (the in-process engine's) is returned as it is."""
    return PromptGrid(grid) if isinstance(grid, FIXED_PERIOD_GRIDS) else grid


def pause_after(waited_s: float) -> float:
    """Seconds to sleep before the next pull, after ``waited_s`` seconds of waiting."""
    return min(LONGEST_PAUSE_S, max(SHORTEST_PAUSE_S, waited_s / 10))


class PromptGrid(Grid):
    """``grid`` with :meth:`send_and_receive` pulling at :func:`pause_after` intervals."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:  # fmt: skip
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull until every reply is in or ``timeout`` seconds
        have passed (None: wait for all), as Flower's grids do."""
        pending = set(self.push_messages(messages))
        start = time.monotonic()
        replies: list[Message] = []
        while True:
            arrived = list(self.pull_messages(pending))
            replies += arrived
            pending -= {message.metadata.reply_to_message_id for message in arrived}
            waited = time.monotonic() - start
            if not pending or (timeout is not None and waited >= timeout):
                return replies
            pause = pause_after(waited)
            if timeout is not None:
                pause = min(pause, timeout - waited)
            time.sleep(pause)
