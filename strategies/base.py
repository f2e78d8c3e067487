"""FedAvg that screens replies and records what each round did (``RoundTrace``).

The Flower-facing part is thin: the screening lives in :mod:`strategies.screening`, the
weighting math in :mod:`strategies.weighting`.
"""

import random
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore import log

from strategies.screening import (
    RoundTrace,
    count_problem,
    number,
    screen_eval_replies,
    screen_replies,
)
from strategies.weighting import fedavg_weights, weighted_average
from task.wire import BUDGET_EXHAUSTED


def average_arrays(contents: list[RecordDict], weights: np.ndarray, keys: list[str]) -> ArrayRecord:
    """Weighted average of the replies' ArrayRecords, keyed like ``keys``."""
    per_client = [
        [record[k].numpy() for k in keys]
        for record in (next(iter(c.array_records.values())) for c in contents)
    ]
    averaged = weighted_average(per_client, weights)
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(keys, averaged, strict=True)})


class ReplyScreening(FedAvg):
    """Screening and the round trace, shared by :class:`TracedFedAvg` and q-FedAvg.

    Mixed in before Flower's strategy (Flower's ``QFedAvg`` is a ``FedAvg``): it keeps
    ``last_round``, screens train replies (:meth:`screen_round`) and evaluate replies.
    ``current_arrays`` (the global arrays sent this round) is set in ``configure_train``.
    """

    current_arrays: ArrayRecord | None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.current_arrays = None
        self.last_round = RoundTrace(round=0)
        #: nodes that replied budget-exhausted: never sampled again in this run
        self.exhausted: set[int] = set()
        self._excluded_now = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep a copy of the global arrays to check replies against, then sample.

        Flower's FedAvg sampling, except that nodes in :attr:`exhausted` are never drawn:
        the round keeps FedAvg's size (``fraction_train`` of all nodes) while enough
        eligible nodes remain, and shrinks to the eligible ones after that.
        """
        self.current_arrays = arrays.copy()
        if self.fraction_train == 0.0:
            return []
        # sample_size 0: only Flower's wait for min_available_nodes, then every node id
        _, all_nodes = sample_nodes(grid, self.min_available_nodes, 0)
        size = max(int(len(all_nodes) * self.fraction_train), self.min_train_nodes)
        eligible = [node for node in all_nodes if node not in self.exhausted]
        self._excluded_now = len(all_nodes) - len(eligible)
        node_ids = random.sample(eligible, min(size, len(eligible)))
        log(INFO, "configure_train: Sampled %s nodes (out of %s; %s excluded: budget spent)",
            len(node_ids), len(all_nodes), self._excluded_now)  # fmt: skip
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Screening: skip '%s' == 1, reject non-finite/mismatched",
            BUDGET_EXHAUSTED)  # fmt: skip
        super().summary()

    def metric_problem(self, metrics: MetricRecord) -> str | None:
        """Say what is wrong with a (non-skipped) reply's metrics; extend in subclasses."""
        return count_problem(metrics, self.weighted_by_key)

    def screen_round(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Start this round's trace; return the screened replies."""
        self.last_round = trace = RoundTrace(round=server_round)
        if self.current_arrays is None:
            raise AggregationError("No global arrays: call `configure_train` first.")
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        trace.failures = len(errors)
        accepted = screen_replies(valid, self.current_arrays, trace, self.metric_problem)
        trace.excluded_exhausted = self._excluded_now
        self.exhausted.update(trace.skipped_budget)
        if not accepted:
            log(WARNING, "aggregate_train: no reply left to aggregate in round %d", server_round)
        return accepted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, then aggregate the accepted ones; the trace is ``last_round``."""
        accepted = self.screen_round(server_round, replies)
        if not accepted or self.current_arrays is None:
            return None, None
        return self.aggregate_accepted(server_round, accepted, self.current_arrays)

    def aggregate_accepted(
        self, server_round: int, accepted: list[Message], reference: ArrayRecord
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate screened replies against the global arrays ``reference``."""
        raise NotImplementedError

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Flower's FedAvg on the evaluate replies that keep the contract."""
        return super().aggregate_evaluate(server_round, screen_eval_replies(replies))


class TracedFedAvg(ReplyScreening):
    """FedAvg (McMahan et al., AISTATS 2017) that screens replies and keeps a trace.

    Each round it (1) counts error replies, (2) skips clients whose DP budget is spent
    (``budget-exhausted == 1``: they did not train), (3) rejects replies with a bad
    MetricRecord or arrays that are non-finite or do not match the global model sent in
    :meth:`configure_train` (a WARNING names node and reason), (4) weights the rest with
    :meth:`client_weights` and averages their arrays. ``last_round`` holds a
    :class:`RoundTrace`; the server reads it, the strategy writes no files.

    Parameters
    ----------
    **fedavg_kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``,
        ``min_train_nodes``, ``weighted_by_key``, ``train_metrics_aggr_fn``, ...).
    """

    def client_weights(
        self, server_round: int, node_ids: list[int], contents: list[RecordDict]
    ) -> np.ndarray:
        """Aggregation weights of the accepted replies (default: FedAvg by examples)."""
        return fedavg_weights([number(c, self.weighted_by_key) for c in contents])

    def aggregate_accepted(
        self, server_round: int, accepted: list[Message], reference: ArrayRecord
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weight and average the accepted replies; the weights go into ``last_round``."""
        node_ids = [msg.metadata.src_node_id for msg in accepted]
        contents = [msg.content for msg in accepted]
        weights = self.client_weights(server_round, node_ids, contents)
        self.last_round.weights = {n: float(w) for n, w in zip(node_ids, weights, strict=True)}
        arrays = average_arrays(contents, weights, list(reference.keys()))
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
