"""The privacy ledger on disk: which state a round starts from, and a damaged file."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from clients import app, ledger_store
from clients.ledger_store import StoredLedger, starting_state
from clients.local import ClientRuntime
from task import wire

BEFORE = {"accountant": "rdp", "noise_multipliers": [1.0], "sample_rates": [0.1], "steps": [5]}
AFTER = {"accountant": "rdp", "noise_multipliers": [1.0, 1.0], "sample_rates": [0.1, 0.1],
         "steps": [5, 5]}  # fmt: skip
STORED = StoredLedger(round=3, request_digest="abc", before=BEFORE, after=AFTER, reply_digest="r")


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
    assert start(server_round=3, digest="other") == AFTER  # another request: charged again
    assert start(server_round=3, reproducible=False) == AFTER  # OS-entropy noise: again
    unknown_answer = StoredLedger(round=3, request_digest="abc", before=BEFORE, after=AFTER)
    assert starting_state(unknown_answer, {}, server_round=3, digest="abc",
                          reproducible=True) == AFTER  # a format-2 file: charged again  # fmt: skip
    longer = AFTER | {"steps": [5, 5, 5], "noise_multipliers": [1.0] * 3,
                      "sample_rates": [0.1] * 3}  # fmt: skip
    assert starting_state(STORED, longer, server_round=4, digest="abc",
                          reproducible=True) == longer  # fmt: skip
    assert starting_state(None, BEFORE, server_round=1, digest="", reproducible=True) == BEFORE


def test_the_digest_sees_every_byte_name_dtype_and_setting() -> None:
    weights = {"a": torch.zeros(3), "b": torch.ones(2)}
    settings = {"run": {"seed": 1}, "train": {"server-round": 3}}
    digest = ledger_store.request_digest(weights, settings)
    assert digest == ledger_store.request_digest(
        {k: v.clone() for k, v in weights.items()},
        {"train": {"server-round": 3}, "run": {"seed": 1}},
    )
    changed = {"a": torch.tensor([0.0, 0.0, 1e-7]), "b": torch.ones(2)}
    assert ledger_store.request_digest(changed, settings) != digest
    assert (
        ledger_store.request_digest({"a": torch.zeros(3), "c": torch.ones(2)}, settings) != digest
    )
    assert ledger_store.request_digest({"a": torch.zeros(3, dtype=torch.float64),
                                        "b": torch.ones(2)}, settings) != digest  # fmt: skip
    assert ledger_store.request_digest(weights, settings | {"run": {"seed": 2}}) != digest


def test_a_format_1_ledger_is_read_and_its_repeat_is_charged_again(tmp_path: Path) -> None:
    """Format 1 digested the weights alone; no request digest equals one, so a round asked
    again is charged again rather than rolled back."""
    path = tmp_path / "partition-0.json"
    path.write_text(json.dumps({"format": 1, "round": 3, "weights_digest": "w",
                                "before": BEFORE, "after": AFTER}))  # fmt: skip
    stored = ledger_store.load(path)
    assert stored == StoredLedger(round=3, request_digest="w", before=BEFORE, after=AFTER)
    digest = ledger_store.request_digest({"a": torch.zeros(1)}, {})
    assert starting_state(stored, {}, server_round=3, digest=digest, reproducible=True) == AFTER


def test_a_repeat_with_another_run_config_or_other_rows_is_charged_again() -> None:
    """The request digest of a round: the run config less where it writes, the round's
    train config, the node and the client's rows (``clients/app.py``)."""
    rows = SimpleNamespace(
        input_ids=torch.ones(4, 2, dtype=torch.long),
        labels=torch.tensor([0, 1, 0, 1]),
        groups=torch.zeros(4, dtype=torch.long),
        variants=None,
    )
    node: dict[str, bool | float | int | str] = {"partition-id": 0, "num-partitions": 2}

    def digest(run: dict, train_rows: SimpleNamespace = rows) -> str:
        context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                          run_config=run)  # fmt: skip
        runtime = cast(ClientRuntime, SimpleNamespace(train=train_rows, public=None))
        config = ConfigRecord({wire.SERVER_ROUND: 3})
        return app._request_digest(context, runtime, config, {"w": torch.zeros(2)})

    run = {"seed": 1, "output-dir": "outputs", "resume-from": ""}
    first = digest(run)
    assert digest(run | {"output-dir": "/elsewhere", "resume-from": "/elsewhere/run"}) == first
    assert digest(run | {"seed": 2}) != first
    relabelled = SimpleNamespace(**(vars(rows) | {"labels": torch.tensor([1, 1, 0, 1])}))
    assert digest(run, relabelled) != first
    variants = SimpleNamespace(input_ids=torch.zeros(8, 2, dtype=torch.long))
    assert digest(run, SimpleNamespace(**(vars(rows) | {"variants": variants}))) != first


def test_a_ledger_shorter_than_the_servers_record_refuses_to_train() -> None:
    config = {wire.SPENT_PARTITIONS: [0, 4], wire.SPENT_EVENTS: [3, 2]}
    recorded = ledger_store.recorded_events(config, 4)
    assert recorded == 2 and ledger_store.recorded_events({}, 4) == 0
    ledger_store.check_not_lost(AFTER, recorded=recorded, where="file")  # 2 events: as seen
    with pytest.raises(ledger_store.LedgerFileError, match="privacy ledger lost.*holds 1 events"):
        ledger_store.check_not_lost(BEFORE, recorded=recorded, where="file")
    with pytest.raises(ledger_store.LedgerFileError, match="holds 0 events"):
        ledger_store.check_not_lost({}, recorded=recorded, where="in memory only")


def test_a_repeat_whose_answer_differs_is_not_sent_and_keeps_the_first_charge(
    tmp_path: Path,
) -> None:
    """Seeded but not bit-identical (another BLAS, thread count): the second answer would
    carry the first one's noise, so the pair would leak the noise-free difference."""
    node: dict[str, bool | float | int | str] = {"partition-id": 0, "num-partitions": 1,
                                                 wire.LEDGER_DIR: str(tmp_path)}  # fmt: skip
    path = ledger_store.ledger_path(tmp_path, 0)
    ledger_store.save(path, STORED)
    config = ConfigRecord({wire.SERVER_ROUND: 3})

    def asked_again() -> tuple[Context, app._DurableLedger]:
        context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
        return context, app._DurableLedger(context, config, "abc", 3)

    context, ledger = asked_again()
    assert ledger.start == BEFORE  # rolled back, to be charged once
    ledger.keep(AFTER, reply_digest="r")  # the same answer: charged once
    assert ledger_store.load(path) == STORED
    context, ledger = asked_again()
    with pytest.raises(ledger_store.RepeatDiffers, match="not bit-identical"):
        ledger.keep(AFTER, reply_digest="another")
    assert ledger_store.load(path) == STORED
    assert dict(context.state.config_records[wire.PRIVACY_STATE]) == AFTER  # not BEFORE


def test_the_answer_digest_ignores_the_wall_time_only() -> None:
    arrays = {"w": torch.ones(2), "scalar": torch.tensor(3.0)}  # a 0-dim tensor too
    metrics = {wire.TRAIN_SECONDS: 1.0, wire.TRAIN_LOSS: 0.5}
    digest = ledger_store.reply_digest(arrays, metrics)
    assert ledger_store.reply_digest(arrays, metrics | {wire.TRAIN_SECONDS: 9.0}) == digest
    assert ledger_store.reply_digest(arrays, metrics | {wire.TRAIN_LOSS: 0.6}) != digest
    assert ledger_store.reply_digest({**arrays, "w": torch.tensor([1.0, 1.5])}, metrics) != digest


@pytest.mark.parametrize(
    "edit",
    [{"after": {}},  # emptied: the node would train from ε = 0
     {"before": AFTER, "after": BEFORE},  # shorter after its last round than before it
     {"after": AFTER | {"steps": [5]}}],  # columns of unequal length
)  # fmt: skip
def test_a_ledger_edited_so_that_it_shrinks_is_refused(tmp_path: Path, edit: dict) -> None:
    path = tmp_path / "partition-0.json"
    ledger_store.save(path, STORED)
    path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    with pytest.raises(ledger_store.LedgerFileError, match="refusing to train"):
        ledger_store.load(path)
