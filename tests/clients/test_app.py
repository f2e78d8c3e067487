"""ClientApp glue: what the node itself decides (node-config), read and checked."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from clients.app import _accounted, _DurableLedger, _secure_rng
from clients.ledger_store import LedgerFileError, load
from clients.rounds import TrainOutcome
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


def test_overlapping_rounds_of_one_client_are_both_charged(tmp_path: Path) -> None:
    """A round the server gave up on can still be training when the next one arrives, each
    with the node's context as the last finished round left it: both read the ledger before
    either writes it, unless the round holds the ledger's lock throughout."""
    node: dict[str, bool | float | int | str] = {"partition-id": 0, "num-partitions": 1}

    def training(start: dict[str, Any]) -> TrainOutcome:
        time.sleep(0.2)
        grown = {key: [*start.get(key, []), value] for key, value in EVENT.items()}
        return TrainOutcome({"w": torch.zeros(1)}, {"loss": 1.0}, {}, ledger_state=grown)

    def one_round(server_round: int) -> None:
        config = ConfigRecord({wire.LEDGER_DIR: str(tmp_path), wire.SERVER_ROUND: server_round})
        _accounted(context(**node), config, f"request {server_round}", server_round, training)

    one_round(1)
    overlapping = [threading.Thread(target=one_round, args=(r,)) for r in (2, 3)]
    for thread in overlapping:
        thread.start()
    for thread in overlapping:
        thread.join()
    stored = load(tmp_path / "partition-0.json")
    assert stored is not None and stored.after["steps"] == [4, 4, 4]  # three rounds released


EVENT = {"noise_multipliers": 1.0, "sample_rates": 0.1, "steps": 4}
