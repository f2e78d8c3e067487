"""ClientApp glue: what the node itself decides (node-config), read and checked."""

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from clients.app import _DurableLedger, _secure_rng
from clients.ledger_store import LedgerFileError
from task import wire


def context(**node_config: bool | float | int | str) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config={})  # fmt: skip


def test_secure_rng_is_the_nodes_choice_and_off_when_unset() -> None:
    assert _secure_rng(context(**{"partition-id": 0})) is False  # simulation: seeded, replayable
    assert _secure_rng(context(**{"secure-rng": True})) is True
    with pytest.raises(ValueError, match="node-config 'secure-rng' must be true or false"):
        _secure_rng(context(**{"secure-rng": "yes"}))


def test_a_restarted_node_without_its_ledger_file_refuses_to_train(tmp_path: Path) -> None:
    """Node-config ``ledger-dir``: the file outlives the process; lost, the node refuses."""
    node: dict[str, bool | float | int | str] = {"partition-id": 2, "num-partitions": 3, "secure-rng": True,
            "ledger-dir": str(tmp_path)}  # fmt: skip
    request = "digest of the round's request"
    spent = {"noise_multipliers": [1.0, 1.0], "sample_rates": [0.1, 0.1], "steps": [4, 4]}
    first = _DurableLedger(context(**node), ConfigRecord(), request, server_round=1)
    first.keep(spent, reply_digest="digest of the answer")
    server_config = ConfigRecord({wire.SPENT_PARTITIONS: [2], wire.SPENT_EVENTS: [2]})
    restarted = _DurableLedger(context(**node), server_config, request, server_round=2)
    assert restarted.start == spent  # a fresh context.state: the file gives the history back
    (tmp_path / "partition-2.json").unlink()
    with pytest.raises(LedgerFileError, match="privacy ledger lost.*holds 0 events"):
        _DurableLedger(context(**node), server_config, request, server_round=2)
