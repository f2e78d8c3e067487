"""Hand a simulated round's messages to the ClientApp actors as soon as they are pushed.

Flower 1.42's simulation engine moves messages from its link state to the actors in one
thread, ``vce_api.add_messages_to_queue``: for *every registered node* it asks the state
for that node's next message, then sleeps 0.1 s (hard-coded). Two costs follow, both
measured here:

- a phase (train, evaluate) starts on average 50 ms after the ServerApp pushed it, twice a
  round, where a steady round of the default experiment is about 0.25 s of work;
- each pass scans the whole message store once per registered node, under the lock the
  ServerApp needs to push and pull: with 10,000 virtual nodes and 100 messages in flight
  that is a million message checks per pass, and rounds grow with the federation's size
  rather than with the clients sampled.

:func:`install` swaps that loop, in the engine's process only, for :func:`dispatch_promptly`:
each pass looks once at the messages not yet delivered and asks the state, through its own
``get_message_ins``, only for the nodes they are addressed to, in Flower's node order, one
message per node per pass as Flower does; passes come 5 ms apart. Delivery marks and
message expiry stay Flower's. Upstream, a condition variable in the link state would
replace this poll (and the grid's, see ``server/prompt_grid.py``); until then this is a
patch of a private function, so it is applied only to the exact function it was written
against (:data:`FLOWER_LOOP_SHA256`): any other Flower keeps its own loop, and a test says so.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import threading
from collections.abc import Mapping
from queue import Queue
from typing import Any

VCE_API = "flwr.server.superlink.fleet.vce.vce_api"
#: sha256 of ``inspect.getsource(vce_api.add_messages_to_queue)`` in flwr 1.42.0
FLOWER_LOOP_SHA256 = "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a"
PASS_INTERVAL_S = 0.005
_flower_loop: Any = None


def dispatch_promptly(
    state: Any, queue: Queue[Any], nodes_mapping: Mapping[int, int], f_stop: threading.Event
) -> None:
    """Flower's ``add_messages_to_queue`` with one look at the store per pass; a state
    other than Flower's in-memory one (the only kind a simulation builds) gets Flower's loop."""
    # Imported here: an engine's process has it already; any other would pay ~2 s for it.
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if not isinstance(state, InMemoryLinkState):
        return _flower_loop(state, queue, nodes_mapping, f_stop)
    nodes = list(nodes_mapping)
    while not f_stop.is_set():
        with state.lock:  # re-entrant: get_message_ins below takes it again
            addressed = {
                message.metadata.dst_node_id
                for message in state.message_ins_store.values()
                if message.metadata.delivered_at == ""
            }
            if addressed:
                for node_id in nodes:
                    if node_id in addressed:
                        for message in state.get_message_ins(node_id=node_id, limit=1):
                            queue.put(message)
        f_stop.wait(PASS_INTERVAL_S)


def flower_loop_sha256(function: Any) -> str:
    """The sha256 of a function's source, as :data:`FLOWER_LOOP_SHA256` was taken."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def install() -> bool:
    """Use :func:`dispatch_promptly` in this process's simulation engine, if one is running
    here and its loop is the one this was written against; True if it is in use."""
    vce_api = sys.modules.get(VCE_API)
    if vce_api is None:
        return False  # no Flower simulation engine here (a SuperNode's app, the in-process engine)
    current = vce_api.add_messages_to_queue
    if current is dispatch_promptly:
        return True
    if flower_loop_sha256(current) != FLOWER_LOOP_SHA256:
        return False
    global _flower_loop
    _flower_loop = current
    setattr(vce_api, "add_messages_to_queue", dispatch_promptly)  # noqa: B010
    return True
