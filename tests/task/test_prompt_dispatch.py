"""The simulation engine's dispatcher swap: Flower's link state, grid and loop, no fakes."""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from flwr.app import Message, RecordDict
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from task import prompt_dispatch
from task.prompt_dispatch import (
    FLOWER_LOOP_SHA256,
    PASS_INTERVAL_S,
    VCE_API,
    dispatch_promptly,
    flower_loop_sha256,
    install,
)
from tests.strategies.test_strategies import server_identity as server_identity  # autouse

RUN_ID = TASK_ID = 1  # the ServerApp identity server_identity gives every Message
# Flower's own loop, even if importing clients.app (another test) already swapped it
FLOWER_LOOP = prompt_dispatch._flower_loop or vce_api.add_messages_to_queue


@dataclasses.dataclass
class Engine:
    """What Flower's simulation sets up before its dispatcher starts (run_simulation.py)."""

    state: Any
    grid: InMemoryGrid
    nodes: dict[int, int]

    def push(self, node_ids: list[int]) -> list[str]:
        messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in node_ids]
        return list(self.grid.push_messages(messages))


@pytest.fixture
def engine() -> Engine:
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    state = cast(InMemoryLinkState, factory.state())  # as Flower's simulation does
    run = dataclasses.replace(
        Run.create_empty(run_id=RUN_ID), primary_task_id=TASK_ID, federation_id=NOOP_FEDERATION_ID
    )
    state.run_ids[RUN_ID] = RunRecord(run=run)
    state.task_store[TASK_ID] = Task(task_id=TASK_ID, run_id=RUN_ID)
    nodes = vce_api._register_nodes(20, factory)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return Engine(state, grid, nodes)


@pytest.fixture
def flower_loop_kept(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever a test installs, vce_api gets Flower's loop back."""
    monkeypatch.setattr(vce_api, "add_messages_to_queue", FLOWER_LOOP)
    monkeypatch.setattr(prompt_dispatch, "_flower_loop", None)
    yield


def dispatched(loop: Callable[..., None], engine: Engine, count: int) -> list[Message]:
    """Run ``loop`` as the engine does until ``count`` messages came out, in that order."""
    out: queue.Queue[Message] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(engine.state, out, engine.nodes, stop))
    thread.start()
    try:
        messages = [out.get(timeout=5) for _ in range(count)]
        time.sleep(0.05)  # a few more passes: nothing is handed out twice
        assert out.empty()
    finally:
        stop.set()
        thread.join()
    return messages


def test_this_flower_has_the_loop_the_swap_was_written_against() -> None:
    """A Flower upgrade that changes the loop turns the swap off; this says it happened."""
    assert flower_loop_sha256(FLOWER_LOOP) == FLOWER_LOOP_SHA256


@pytest.mark.usefixtures("flower_loop_kept")
def test_install_swaps_flowers_loop_once_and_only_that_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert install() and vce_api.add_messages_to_queue is dispatch_promptly
    assert install() and prompt_dispatch._flower_loop is FLOWER_LOOP  # idempotent

    other = types.ModuleType(VCE_API)
    other.add_messages_to_queue = lambda *args: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, VCE_API, other)
    assert not install()  # another Flower's loop: left as it is
    assert other.add_messages_to_queue is not dispatch_promptly  # type: ignore[attr-defined]

    monkeypatch.delitem(sys.modules, VCE_API)
    assert not install()  # no simulation engine in this process


@pytest.mark.usefixtures("flower_loop_kept")
def test_hands_out_what_flowers_loop_does_in_its_order(engine: Engine) -> None:
    install()
    targets = list(engine.nodes)[::3]
    pushed = engine.push(targets)
    ours = dispatched(dispatch_promptly, engine, len(pushed))
    assert [m.metadata.dst_node_id for m in ours] == targets  # Flower's node order
    assert sorted(m.metadata.message_id for m in ours) == sorted(pushed)
    assert all(m.metadata.delivered_at for m in ours)

    pushed = engine.push(targets)
    flowers = dispatched(FLOWER_LOOP, engine, len(pushed))
    assert [m.metadata.dst_node_id for m in flowers] == targets


@pytest.mark.usefixtures("flower_loop_kept")
def test_a_node_with_two_messages_gets_one_per_pass_and_both(engine: Engine) -> None:
    install()
    node = next(iter(engine.nodes))
    pushed = engine.push([node, node])
    messages = dispatched(dispatch_promptly, engine, 2)
    assert sorted(m.metadata.message_id for m in messages) == sorted(pushed)


class Passes(threading.Event):
    """A stop event that counts the loop's passes (each ends in ``wait``), pushes to
    ``engine`` after the first one and stops the loop after ``count``; never sleeps."""

    def __init__(self, engine: Engine, node: int, count: int) -> None:
        super().__init__()
        self.engine, self.node, self.count = engine, node, count
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) == 1:
            self.engine.push([self.node])
        if len(self.waits) == self.count:
            self.set()
        return self.is_set()


@pytest.mark.usefixtures("flower_loop_kept")
def test_a_message_pushed_between_passes_goes_out_on_the_next_one(engine: Engine) -> None:
    """Passes are PASS_INTERVAL_S apart, not Flower's 0.1 s; one pass is enough."""
    install()
    out: queue.Queue[Message] = queue.Queue()
    node = list(engine.nodes)[3]
    passes = Passes(engine, node, count=2)
    dispatch_promptly(engine.state, out, engine.nodes, passes)
    assert passes.waits == [PASS_INTERVAL_S, PASS_INTERVAL_S] and PASS_INTERVAL_S < 0.1
    assert out.get_nowait().metadata.dst_node_id == node


def test_a_state_other_than_flowers_in_memory_one_gets_flowers_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(prompt_dispatch, "_flower_loop", lambda *args: calls.append(args))
    other_state = object()
    dispatch_promptly(other_state, queue.Queue(), {}, threading.Event())
    assert calls and calls[0][0] is other_state
