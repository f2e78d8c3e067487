"""The compute floor: the project's ServerApp and ClientApp in one process, no SuperLink or Ray.

Flower strategies talk to a :class:`~flwr.serverapp.Grid`. :class:`InProcessGrid` answers
each message by calling the ClientApp directly, node after node, with a per-node
``Context`` that lives as long as the run (so ledgers in ``context.state`` persist, as in
simulation). Same clients, same data, same DP training and aggregation as ``flwr run``
(a seeded run gives its metrics, client sampling included: ``tests/e2e/test_in_process.py``):
what is left of a round's wall time here is the work itself, which is what the overhead
benchmark compares Flower against. Flower ships no such grid (its ``InMemoryGrid`` needs a
SuperLink state and a separate ClientApp runtime), hence this one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from server.records import mark_stopped, results_version
from simulations.experiment import Experiment
from simulations.runner import check_complete
from task.config import load_defaults


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process, answered in order."""

    def __init__(self, client_app: ClientApp, run_config: dict[str, Any], num_nodes: int) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(random.getrandbits(63))
        self._contexts = {
            1_000 + i: Context(
                run_id=self._run.run_id,
                node_id=1_000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=run_config,
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        #: seconds spent inside ClientApp calls, summed over the run
        self.client_seconds = 0.0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> Iterable[str]:
        """Answer each message now; a reply that took longer than ``timeout`` is lost, as
        one from a node that answers after the server stopped waiting (each node is timed
        on its own, as if it ran on its own machine)."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message_id = str(uuid4())
            message.metadata.__dict__["_run_id"] = self._run.run_id
            reply, seconds = self._answer(message)
            if timeout is None or seconds <= timeout:
                self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def _answer(self, message: Message) -> tuple[Message, float]:
        """The ClientApp's reply and its seconds; an exception becomes an error reply, as
        in Flower."""
        start = time.perf_counter()
        try:
            reply = self._client_app(message, self._contexts[message.metadata.dst_node_id])
        except Exception as exc:  # the strategy sees it as a failed reply
            error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(exc))
            reply = Message(error, reply_to=message)
        seconds = time.perf_counter() - start
        self.client_seconds += seconds
        return reply, seconds

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages, timeout))


def run_in_process(experiment: Experiment) -> tuple[Path, InProcessGrid]:
    """Run ``experiment`` in this process; return its run directory and the grid used."""
    from clients.app import app as client_app  # imported late: they load torch
    from server.app import app as server_app

    run_config = load_defaults() | experiment.overrides
    run_config["output-dir"] = str(Path(experiment.run_config.output_dir).expanduser().resolve())
    grid = InProcessGrid(client_app, run_config, experiment.federation["num-supernodes"])
    context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
        run_config=run_config,
    )  # fmt: skip
    assert isinstance(server_app, ServerApp)
    # What Flower's ServerApp runtime sets before it calls the app; Messages read it.
    saved = TaskIdentity._task_id, TaskIdentity._node_id, TaskIdentity._run_id
    TaskIdentity.task_id, TaskIdentity.node_id = 1, SUPERLINK_NODE_ID
    TaskIdentity.run_id = grid.run.run_id
    resumed = experiment.run_config.resume_from
    run_dir = Path(resumed) if resumed else Path(run_config["output-dir"]) / str(grid.run.run_id)
    before = results_version(run_dir) if resumed else None
    try:
        server_app(grid, context)
        check_complete(run_dir, experiment.run_config.num_server_rounds, run_dir)
    except BaseException as error:
        if run_dir.is_dir():
            mark_stopped(run_dir, error, unless_unchanged=before)
        raise
    finally:
        TaskIdentity._task_id, TaskIdentity._node_id, TaskIdentity._run_id = saved
    return run_dir, grid
