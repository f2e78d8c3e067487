"""PromptGrid: replies collected as they arrive, with Flower's send_and_receive contract."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import HttpGrid, InMemoryGrid

from server import prompt_grid
from server.prompt_grid import LONGEST_PAUSE_S, SHORTEST_PAUSE_S, PromptGrid, pause_after, prompt
from tests.strategies.test_strategies import server_identity as server_identity  # autouse


class Clock:
    """Virtual time for PromptGrid and the nodes: ``sleep`` advances it, nothing waits, so
    the figures below hold on a loaded machine as on an idle one."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    virtual = Clock()
    monkeypatch.setattr(prompt_grid, "time", virtual)
    return virtual


class SlowNodes(Grid):
    """Node i's reply is ready ``delays[i]`` seconds after the push; counts the pulls."""

    def __init__(self, delays: list[float], clock: Clock) -> None:
        self.delays, self.clock = delays, clock
        self.pulls = 0
        self.ready_at: dict[str, float] = {}
        self.replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:  # fmt: skip
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return range(len(self.delays))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{message.metadata.dst_node_id}"
            message.metadata.__dict__["_message_id"] = message_id
            self.ready_at[message_id] = self.clock.now + self.delays[message.metadata.dst_node_id]
            self.replies[message_id] = Message(RecordDict(), reply_to=message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        return [self.replies.pop(i) for i in list(message_ids)
                if i in self.replies and self.ready_at[i] <= self.clock.now]  # fmt: skip

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise AssertionError("PromptGrid must not call the wrapped grid's polling loop")


def _send(nodes: SlowNodes, timeout: float | None) -> tuple[list[Message], float]:
    grid = PromptGrid(nodes)
    messages = [grid.create_message(RecordDict(), "train", i, "1") for i in grid.get_node_ids()]
    start = nodes.clock.now
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    return replies, nodes.clock.now - start


def test_every_reply_is_collected_soon_after_the_last_one_is_ready(clock: Clock) -> None:
    nodes = SlowNodes([0.0, 0.05, 0.2], clock)
    replies, seconds = _send(nodes, timeout=None)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    # at most a tenth (or the shortest pause) late; Flower's simulation grid: up to 0.1 s
    assert 0.2 <= seconds <= 0.2 * 1.1 + SHORTEST_PAUSE_S
    assert nodes.pulls < 40


def test_a_timeout_returns_the_replies_in_by_then(clock: Clock) -> None:
    nodes = SlowNodes([0.0, 30.0], clock)
    replies, seconds = _send(nodes, timeout=0.3)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.3 <= seconds <= 0.3 * 1.1 + SHORTEST_PAUSE_S


def test_the_pause_is_a_tenth_of_the_wait_within_bounds() -> None:
    assert pause_after(0.0) == SHORTEST_PAUSE_S
    assert pause_after(2.0) == pytest.approx(0.2)
    assert pause_after(600.0) == LONGEST_PAUSE_S


def test_only_flowers_fixed_period_grids_are_wrapped() -> None:
    for flower_grid in (InMemoryGrid, HttpGrid):
        grid = flower_grid.__new__(flower_grid)  # the type is what decides
        wrapped = prompt(grid)
        assert isinstance(wrapped, PromptGrid) and wrapped.grid is grid
    own = SlowNodes([0.0], Clock())
    assert prompt(own) is own
