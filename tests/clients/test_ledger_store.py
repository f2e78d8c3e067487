"""The privacy ledger on disk: which state a round starts from, and a damaged file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clients import ledger_store
from clients.ledger_store import StoredLedger, starting_state
from task import wire

BEFORE = {"accountant": "rdp", "noise_multipliers": [1.0], "sample_rates": [0.1], "steps": [5]}
AFTER = {"accountant": "rdp", "noise_multipliers": [1.0, 1.0], "sample_rates": [0.1, 0.1],
         "steps": [5, 5]}  # fmt: skip
STORED = StoredLedger(round=3, weights_digest="abc", before=BEFORE, after=AFTER)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    path = ledger_store.ledger_path(tmp_path / "ledgers", 4)
    ledger_store.save(path, STORED)
    assert path.name == "partition-4.json"
    assert ledger_store.load(path) == STORED
    assert ledger_store.load(tmp_path / "absent.json") is None


def test_a_damaged_ledger_refuses_rather_than_resetting_epsilon(tmp_path: Path) -> None:
    path = tmp_path / "partition-0.json"
    path.write_text('{"format": 1, "round": 2')
    with pytest.raises(ledger_store.LedgerFileError, match="refusing to train"):
        ledger_store.load(path)


def test_the_longer_history_wins_and_a_seeded_repeat_rolls_back_one_round() -> None:
    def start(**kw: object) -> dict:
        args = {"server_round": 4, "digest": "abc", "reproducible": True} | kw
        return starting_state(STORED, {}, **args)  # type: ignore[arg-type]

    assert start() == AFTER  # the next round: from the file (a resumed run's memory is empty)
    assert start(server_round=3) == BEFORE  # round 3 asked again with the same weights
    assert start(server_round=3, digest="other") == AFTER  # other weights: charged again
    assert start(server_round=3, reproducible=False) == AFTER  # OS-entropy noise: again
    longer = AFTER | {"steps": [5, 5, 5], "noise_multipliers": [1.0] * 3,
                      "sample_rates": [0.1] * 3}  # fmt: skip
    assert starting_state(STORED, longer, server_round=4, digest="abc",
                          reproducible=True) == longer  # fmt: skip
    assert starting_state(None, BEFORE, server_round=1, digest="", reproducible=True) == BEFORE


def test_the_digest_sees_every_byte_name_and_dtype() -> None:
    weights = {"a": torch.zeros(3), "b": torch.ones(2)}
    digest = ledger_store.weights_digest(weights)
    assert digest == ledger_store.weights_digest({k: v.clone() for k, v in weights.items()})
    changed = {"a": torch.tensor([0.0, 0.0, 1e-7]), "b": torch.ones(2)}
    assert ledger_store.weights_digest(changed) != digest
    assert ledger_store.weights_digest({"a": torch.zeros(3), "c": torch.ones(2)}) != digest
    assert ledger_store.weights_digest({"a": torch.zeros(3, dtype=torch.float64),
                                        "b": torch.ones(2)}) != digest  # fmt: skip


def test_a_ledger_shorter_than_the_servers_record_refuses_to_train() -> None:
    config = {wire.SPENT_PARTITIONS: [0, 4], wire.SPENT_EVENTS: [3, 2]}
    recorded = ledger_store.recorded_events(config, 4)
    assert recorded == 2 and ledger_store.recorded_events({}, 4) == 0
    ledger_store.check_not_lost(AFTER, recorded=recorded, where="file")  # 2 events: as seen
    with pytest.raises(ledger_store.LedgerFileError, match="privacy ledger lost.*holds 1 events"):
        ledger_store.check_not_lost(BEFORE, recorded=recorded, where="file")
    with pytest.raises(ledger_store.LedgerFileError, match="holds 0 events"):
        ledger_store.check_not_lost({}, recorded=recorded, where="in memory only")
