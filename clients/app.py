"""ClientApp: unpack the Message, run the local core, pack the reply. Nothing else."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.local import ClientRuntime, client_runtime
from clients.rounds import evaluate_round, train_round
from task.config import RunConfig, parse_run_config
from task.wire import (
    ARRAYS_RECORD,
    CLIENT_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    PRIVACY_STATE,
)

app = ClientApp()


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


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global weights on the local partition."""
    cfg, runtime = _runtime(context)
    weights = msg.content.array_records[ARRAYS_RECORD].to_torch_state_dict()
    ledger = context.state.config_records.get(PRIVACY_STATE, ConfigRecord())
    outcome = train_round(
        cfg,
        runtime,
        weights,
        msg.content.config_records[CONFIG_RECORD],
        node_id=context.node_id,
        partition_id=_partition(context)[0],
        ledger_state=dict(ledger),
        secure_rng=_secure_rng(context),
    )
    if outcome.ledger_state is not None:  # the accountant's history outlives the process
        context.state[PRIVACY_STATE] = ConfigRecord(outcome.ledger_state)
    content = RecordDict(
        {
            ARRAYS_RECORD: ArrayRecord(outcome.weights),
            METRICS_RECORD: MetricRecord(outcome.metrics),
            CLIENT_RECORD: ConfigRecord(outcome.client_record),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global weights on the local held-out split."""
    _, runtime = _runtime(context)
    weights = msg.content.array_records[ARRAYS_RECORD].to_torch_state_dict()
    metrics = evaluate_round(runtime, weights)
    return Message(content=RecordDict({METRICS_RECORD: MetricRecord(metrics)}), reply_to=msg)
