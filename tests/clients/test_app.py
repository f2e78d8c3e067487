"""ClientApp glue: what the node itself decides (node-config), read and checked."""

import pytest
from flwr.app import Context, RecordDict

from clients.app import _secure_rng


def context(**node_config: bool | float | int | str) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config={})  # fmt: skip


def test_secure_rng_is_the_nodes_choice_and_off_when_unset() -> None:
    assert _secure_rng(context(**{"partition-id": 0})) is False  # simulation: seeded, replayable
    assert _secure_rng(context(**{"secure-rng": True})) is True
    with pytest.raises(ValueError, match="node-config 'secure-rng' must be true or false"):
        _secure_rng(context(**{"secure-rng": "yes"}))
