"""ClientApp: unpack the Message, run the local core, pack the reply. Nothing else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import faults, ledger_store
from clients.first_call import note_first_call
from clients.local import ClientRuntime, client_runtime
from clients.rounds import TrainOutcome, evaluate_round, train_round
from task.config import LOCATION_KEYS, RunConfig, parse_run_config
from task.prompt_dispatch import install as install_prompt_dispatch
from task.wire import (
    ARRAYS_RECORD,
    CLIENT_RECORD,
    CONFIG_RECORD,
    LEDGER_DIR,
    METRICS_RECORD,
    PARTITION_ID,
    PRIVACY_STATE,
    SERVER_ROUND,
)

app = ClientApp(mods=[note_first_call])
# Flower's simulation engine loads this module in its own process right before it starts
# the thread that dispatches messages to the actors: the one hook of ours that runs first.
install_prompt_dispatch()


def _partition(context: Context) -> tuple[int, int]:
    """Which slice of the data this node holds: from node_config in simulation and deployment."""
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def _secure_rng(context: Context) -> bool:
    """The node's own choice (node-config ``secure-rng``): DP noise from OS entropy, not
    the run seed the server chose. Off in simulation, on in every shipped deployment."""
    value = context.node_config.get("secure-rng", False)
    if not isinstance(value, bool):
        raise ValueError(f"node-config 'secure-rng' must be true or false, got {value!r}")
    return value


def _runtime(context: Context) -> tuple[RunConfig, ClientRuntime]:
    cfg = parse_run_config(context.run_config)
    return cfg, client_runtime(cfg, *_partition(context))


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's roll call (``strategies/sampling.py``) with this node's partition,
    from node-config: no data is read, no budget spent."""
    partition, _ = _partition(context)
    return Message(
        RecordDict({METRICS_RECORD: MetricRecord({PARTITION_ID: partition})}), reply_to=msg
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global weights on the local partition (``faults.*``: misbehave)."""
    cfg, runtime = _runtime(context)
    server_config = msg.content.config_records[CONFIG_RECORD]
    server_round = int(cast(int, server_config.get(SERVER_ROUND, 0)))
    partition, num_partitions = _partition(context)
    fault = faults.drawn_fault(
        cfg.faults, seed=cfg.seed, server_round=server_round, partition_id=partition
    )
    if fault == faults.CRASH:
        raise faults.InjectedCrash(f"injected crash (faults.crash-rate) in round {server_round}")
    weights = msg.content.array_records[ARRAYS_RECORD].to_torch_state_dict()
    request = _request_digest(context, runtime, server_config, weights)
    outcome = _accounted(
        context, server_config, request, server_round,
        lambda start: train_round(
            cfg, runtime, weights, server_config, node_id=context.node_id,
            partition_id=partition, ledger_state=start, secure_rng=_secure_rng(context),
        ),
    )  # fmt: skip
    sent, metrics = faults.misbehave(  # an injected timeout sleeps here: the ledger is kept
        cfg, fault, outcome.weights, outcome.metrics, weights,
        server_round=server_round, partition_id=partition, num_partitions=num_partitions,
        rarest_group=runtime.rarest_group,
    )  # fmt: skip
    content = RecordDict(
        {
            ARRAYS_RECORD: ArrayRecord(sent),
            METRICS_RECORD: MetricRecord(metrics),
            CLIENT_RECORD: ConfigRecord(outcome.client_record),
        }
    )
    return Message(content=content, reply_to=msg)


def _accounted(
    context: Context,
    server_config: ConfigRecord,
    request: str,
    server_round: int,
    train: Callable[[dict[str, Any]], TrainOutcome],
) -> TrainOutcome:
    """``train`` from the node's ledger, and the ledger it leaves kept, with the ledger
    file locked throughout (:func:`ledger_store.exclusive`): two overlapping rounds of one
    client (one the server gave up on, still training) are charged one after the other."""
    with ledger_store.exclusive(_ledger_file(context, server_config)):
        ledger = _DurableLedger(context, server_config, request, server_round)
        outcome = train(ledger.start)
        if outcome.ledger_state is not None:  # the accountant's history outlives the process
            answer = ledger_store.reply_digest(outcome.weights, outcome.metrics)
            ledger.keep(outcome.ledger_state, answer)
    return outcome


def _request_digest(
    context: Context, runtime: ClientRuntime, server_config: ConfigRecord, weights: dict[str, Any]
) -> str:
    """What this round's seeded answer is computed from (:func:`ledger_store.request_digest`):
    a repeated round is charged once only if all of it is the same."""
    rows = runtime.train
    tensors = {f"weights/{name}": tensor for name, tensor in weights.items()}
    tensors |= {"rows/input_ids": rows.input_ids, "rows/labels": rows.labels,
                "rows/groups": rows.groups}  # fmt: skip
    if rows.variants is not None:  # counterfactual copies: the lexicon file may have changed
        tensors["rows/variant_ids"] = rows.variants.input_ids
    if runtime.public is not None:  # synthesized public examples
        tensors["public/input_ids"] = runtime.public.input_ids
    run_config = {k: v for k, v in context.run_config.items() if k not in LOCATION_KEYS}
    return ledger_store.request_digest(
        tensors, {"run": run_config, "train": dict(server_config), "node": context.node_config}
    )


def _ledger_file(context: Context, server_config: ConfigRecord) -> Path | None:
    """The node's ledger file (:class:`_DurableLedger`), None where it keeps none."""
    directory = context.node_config.get(LEDGER_DIR) or (
        None if _secure_rng(context) else server_config.get(LEDGER_DIR)
    )
    return ledger_store.ledger_path(str(directory), _partition(context)[0]) if directory else None


class _DurableLedger:
    """The node's privacy ledger: ``context.state`` and, where there is a ledger directory,
    a file that survives restarts and resumes (:mod:`clients.ledger_store`).

    The directory is the node's own (node-config ``ledger-dir``) or, for a simulated node
    with seeded randomness only, the one the ServerApp names under the run directory: a
    deployed node never lets the server choose where its ε is remembered.
    """

    def __init__(
        self, context: Context, server_config: ConfigRecord, request: str, server_round: int
    ) -> None:
        self.context, self.server_round = context, server_round
        secure = _secure_rng(context)
        partition = _partition(context)[0]
        self.path = _ledger_file(context, server_config)
        self.digest = request if self.path else ""
        memory = context.state.config_records.get(PRIVACY_STATE, ConfigRecord())
        stored = ledger_store.load(self.path) if self.path else None
        self.start = ledger_store.starting_state(
            stored, dict(memory), server_round=server_round, digest=self.digest,
            reproducible=not secure,
        )  # fmt: skip
        repeat = ledger_store.is_repeat(
            stored, server_round=server_round, digest=self.digest, reproducible=not secure
        )
        self.repeated = stored if repeat else None
        recorded = ledger_store.recorded_events(server_config, partition)
        where = str(self.path) if self.path else "in memory only: no node-config ledger-dir"
        ledger_store.check_not_lost(self.start, recorded=recorded, where=where)

    def keep(self, state: dict[str, Any], reply_digest: str) -> None:
        """Remember the new state; on disk (fsync'd) before the reply leaves. A repeated
        round's answer must be the one already sent (:func:`ledger_store.check_same_answer`):
        else the ledger stays as that round left it and nothing is sent."""
        if self.repeated is not None:
            self.context.state[PRIVACY_STATE] = ConfigRecord(self.repeated.after)
            ledger_store.check_same_answer(self.repeated, reply_digest)
        self.context.state[PRIVACY_STATE] = ConfigRecord(state)
        if self.path is not None:
            stored = ledger_store.StoredLedger(
                self.server_round, self.digest, self.start, state, reply_digest
            )
            ledger_store.save(self.path, stored)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global weights on the local held-out split."""
    _, runtime = _runtime(context)
    weights = msg.content.array_records[ARRAYS_RECORD].to_torch_state_dict()
    metrics = evaluate_round(runtime, weights)
    return Message(content=RecordDict({METRICS_RECORD: MetricRecord(metrics)}), reply_to=msg)
