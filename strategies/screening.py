"""Reply screening: what every strategy checks before it weights a reply (``RoundTrace``).

A reply is skipped when its client's DP budget is spent, and rejected when its records
break the wire contract (:mod:`task.wire`) or its arrays do not match the global model.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from strategies.weighting import reject_reason
from task.wire import (
    BUDGET_EXHAUSTED,
    CLIENT_RECORD,
    EVAL_METRICS,
    NUM_EXAMPLES,
    TRAIN_METRICS,
    TRAIN_SECONDS,
)

MetricValue = int | float | list[int] | list[float]


@dataclass
class RoundTrace:
    """What one ``aggregate_train`` call did; read by the server after each round.

    Node ids are Flower node ids (``msg.metadata.src_node_id``); :meth:`to_json` turns
    them into strings for ``results.json``.

    Attributes
    ----------
    round : int
        Server round.
    weights : dict[int, float]
        Aggregation weight of every *aggregated* client (sums to 1; skipped and
        rejected clients are absent).
    skipped_budget : list[int]
        Clients that replied ``budget-exhausted == 1`` (did not train, not aggregated).
    excluded_exhausted : int
        Nodes left out of this round's sampling because an earlier reply said their
        budget was spent.
    rejected : dict[int, str]
        Clients whose reply was refused, with the reason.
    failures : int
        Error replies plus sampled nodes that sent no reply within the round timeout.
    failure_reasons : dict[int, str]
        Why each of those failed: the error the node reported, or the timeout.
    skipped : str
        Why the round was not aggregated although replies came ("" when it was, or when
        none was left): fewer accepted replies than ``min-clients``.
    client_metrics : dict[int, dict[str, MetricValue]]
        The MetricRecord of every non-error reply, including skipped and rejected ones.
    client_records : dict[int, dict[str, Any]]
        The client ConfigRecord (node id, privacy ledger) of every non-error reply,
        rejected ones included: their ε was spent too. Not in :meth:`to_json`; the
        server reports it under ``privacy``.
    prevalence : dict[str, float]
        Estimated population group shares (representation-aware strategy only).
    extras : dict[str, float]
        Strategy-specific scalars (e.g. FairFed's global metric, q-FedAvg step scale).
    """

    round: int
    weights: dict[int, float] = field(default_factory=dict)
    skipped_budget: list[int] = field(default_factory=list)
    excluded_exhausted: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    failures: int = 0
    failure_reasons: dict[int, str] = field(default_factory=dict)
    skipped: str = ""
    client_metrics: dict[int, dict[str, MetricValue]] = field(default_factory=dict)
    client_records: dict[int, dict[str, Any]] = field(default_factory=dict)
    prevalence: dict[str, float] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict with node ids as strings."""
        return {
            "round": self.round,
            "weights": {str(k): v for k, v in self.weights.items()},
            "skipped_budget": [str(k) for k in self.skipped_budget],
            "excluded_exhausted": self.excluded_exhausted,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "failures": self.failures,
            "failure_reasons": {str(k): v for k, v in self.failure_reasons.items()},
            **({"skipped": self.skipped} if self.skipped else {}),
            "client_metrics": {str(k): dict(v) for k, v in self.client_metrics.items()},
            "prevalence": dict(self.prevalence),
            "extras": dict(self.extras),
        }


def metrics_of(content: RecordDict) -> MetricRecord:
    """Return the single MetricRecord of a reply (screened replies have exactly one)."""
    return next(iter(content.metric_records.values()))


def number(content: RecordDict, key: str) -> float:
    """Return a scalar metric of a screened reply as float."""
    return float(cast(float, metrics_of(content)[key]))


#: Larger than any real count or loss, small enough that sums and powers stay finite: a
#: finite 1e308 would overflow the weights and end the run (or NaN q-FedAvg's step).
MAX_COUNT = 1e12
MAX_LOSS = 1e6


def finite_number(
    metrics: MetricRecord,
    key: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> str | None:
    """Say what is wrong with ``metrics[key]`` as a finite number in [minimum, maximum]."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"'{key}' missing or not a number: {value!r}"
    low = minimum is not None and value < minimum
    if not np.isfinite(value) or low or (maximum is not None and value > maximum):
        bound = "" if minimum is None else f" and >= {minimum}"
        bound += "" if maximum is None else f" and <= {maximum:g}"
        return f"'{key}' must be finite{bound}, got {value}"
    return None


def count_problem(metrics: MetricRecord, key: str) -> str | None:
    """Say what is wrong with ``metrics[key]`` as a positive finite example count."""
    problem = finite_number(metrics, key, minimum=0.0, maximum=MAX_COUNT)
    if problem is None and metrics[key] == 0:
        return f"'{key}' must be > 0, got 0"
    return problem


def array_problem(content: RecordDict, reference: ArrayRecord) -> str | None:
    """Check a reply's (single) ArrayRecord against the global arrays sent this round."""
    if len(content.array_records) != 1:
        return f"expected exactly one ArrayRecord, got {len(content.array_records)}"
    record = next(iter(content.array_records.values()))
    keys = list(reference.keys())
    if set(record.keys()) != set(keys):
        missing = sorted(set(keys) - set(record.keys()))
        extra = sorted(set(record.keys()) - set(keys))
        return f"array keys differ from the global model: missing {missing}, unexpected {extra}"
    return reject_reason(
        [record[k].numpy() for k in keys], [reference[k].numpy() for k in keys], names=keys
    )


def screen_replies(
    replies: list[Message],
    reference: ArrayRecord,
    trace: RoundTrace,
    metric_problem: Callable[[MetricRecord], str | None],
) -> list[Message]:
    """Drop budget-exhausted replies and reject malformed ones, recording both in ``trace``.

    Every strategy requires the metric keys of the client contract
    (:data:`task.wire.TRAIN_METRICS`) and a finite ``train-seconds`` >= 0 (the server
    records it) on top of its own ``metric_problem``.

    Accepted replies get their ArrayRecord re-keyed in the global model's key order.
    """
    accepted: list[Message] = []
    trace.client_records.update(client_records(replies))
    for msg in replies:
        node, content = msg.metadata.src_node_id, msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            reason: str | None = "expected exactly one ArrayRecord and one MetricRecord"
        elif problem := key_problem(metrics_of(content), TRAIN_METRICS):
            reason = problem
        else:
            metrics = metrics_of(content)
            trace.client_metrics[node] = dict(metrics)
            exhausted = metrics.get(BUDGET_EXHAUSTED, 0)
            if exhausted == 1:
                trace.skipped_budget.append(node)
                log(INFO, "aggregate_train: node %d skipped (DP budget exhausted)", node)
                continue
            flag = f"'{BUDGET_EXHAUSTED}' must be 0 or 1, got {exhausted}"
            reason = (
                (None if exhausted == 0 else flag)
                or finite_number(metrics, TRAIN_SECONDS, minimum=0.0)
                or metric_problem(metrics)
                or array_problem(content, reference)
            )
        if reason is not None:
            trace.rejected[node] = reason
            log(WARNING, "aggregate_train: rejected reply from node %d: %s", node, reason)
            continue
        rekey_like(content, reference)
        accepted.append(msg)
    return accepted


def client_records(replies: list[Message]) -> dict[int, dict[str, Any]]:
    """The ``client`` ConfigRecord (privacy report) of every non-error reply, by node."""
    records: dict[int, dict[str, Any]] = {}
    for msg in replies:
        if msg.has_error():
            continue
        if (record := msg.content.config_records.get(CLIENT_RECORD)) is not None:
            records[msg.metadata.src_node_id] = dict(record)
    return records


def key_problem(metrics: MetricRecord, expected: frozenset[str]) -> str | None:
    """Say how the reply's metric keys differ from the contract's ``expected`` keys."""
    if (keys := set(metrics)) == expected:
        return None
    return (f"metric keys differ from the client contract: missing {sorted(expected - keys)}, "
            f"unexpected {sorted(keys - expected)}")  # fmt: skip


def screen_eval_replies(replies: Iterable[Message]) -> list[Message]:
    """Drop evaluate replies that break the contract (logged), before Flower's consistency
    check, which would end the run over one odd reply; error replies go on to Flower."""
    kept: list[Message] = []
    for msg in replies:
        if not msg.has_error():
            records = msg.content.metric_records
            problem = (
                "expected exactly one MetricRecord"
                if len(records) != 1
                else key_problem(metrics_of(msg.content), EVAL_METRICS)
                or count_problem(metrics_of(msg.content), NUM_EXAMPLES)
            )
            if problem:
                node = msg.metadata.src_node_id
                log(WARNING, "aggregate_evaluate: ignored reply from node %d: %s", node, problem)
                continue
        kept.append(msg)
    return kept


def rekey_like(content: RecordDict, reference: ArrayRecord) -> None:
    """Put the reply's ArrayRecord in the global model's key order, so that order-based
    code (q-FedAvg, Flower's clipping) cannot mix up layers."""
    key, record = next(iter(content.array_records.items()))
    content[key] = ArrayRecord({k: record[k] for k in reference})
