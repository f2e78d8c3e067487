"""FedAvg that screens replies and records what each round did (``RoundTrace``).

The Flower-facing part is thin: the screening lives in :mod:`strategies.screening`, the
weighting math in :mod:`strategies.weighting`.
"""

import random
from collections.abc import Callable, Iterable
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

from strategies.robust import robust_aggregate
from strategies.sampling import rng_state, roll_call, round_size, set_rng_state
from strategies.screening import (
    RoundTrace,
    count_problem,
    number,
    screen_eval_replies,
    screen_replies,
)
from strategies.weighting import fedavg_weights
from task.config import RobustConfig
from task.wire import (
    BUDGET_EXHAUSTED,
    HISTORY_SIGMA,
    PARTITION_ID,
    SPENT_EVENTS,
    SPENT_PARTITIONS,
)


def aggregate_arrays(
    contents: list[RecordDict], weights: np.ndarray, reference: ArrayRecord, robust: RobustConfig
) -> ArrayRecord:
    """The replies' ArrayRecords aggregated with ``weights`` (weighted mean, or the robust
    rule of ``robust``), keyed like the global ``reference``."""
    keys = list(reference.keys())
    per_client = [
        [record[k].numpy() for k in keys]
        for record in (next(iter(c.array_records.values())) for c in contents)
    ]
    aggregated = robust_aggregate(
        per_client, weights, [reference[k].numpy() for k in keys],
        method=robust.method, trim=robust.trim, trim_gate=robust.trim_gate,
        norm_bound=robust.norm_bound, norm_factor=robust.norm_factor,
    )  # fmt: skip
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(keys, aggregated, strict=True)})


class ReplyScreening(FedAvg):
    """Screening and the round trace, shared by :class:`TracedFedAvg` and q-FedAvg.

    Mixed in before Flower's strategy (Flower's ``QFedAvg`` is a ``FedAvg``): it keeps
    ``last_round``, screens train replies (:meth:`screen_round`) and evaluate replies.
    ``current_arrays`` (the global arrays sent this round) is set in ``configure_train``.
    """

    current_arrays: ArrayRecord | None

    def __init__(
        self,
        *,
        min_clients: int = 1,
        round_timeout: float = 3600.0,
        sample_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.min_clients = min_clients
        self.round_timeout = round_timeout
        #: draws the train and evaluate nodes (:mod:`strategies.sampling`), checkpointed
        self.sampler = random.Random(sample_seed)
        #: nodes a roll call asked for their partition (each is asked once)
        self._asked: set[int] = set()
        self.current_arrays = None
        #: what the clients evaluate, made from the round's aggregate (the server sets the
        #: reported model, the moving average); None: the aggregate itself, as in Flower
        self.evaluation_model: Callable[[ArrayRecord], ArrayRecord] | None = None
        #: the nodes sampled in this round's configure_train (who owes a reply)
        self.sampled_now: list[int] = []
        #: rounds done before this process started (a resumed run); Flower counts from 1
        self.round_offset = 0
        #: partition of each node that reported one: what a checkpoint keys state by,
        #: since a resumed run's nodes come back under new ids
        self.node_partitions: dict[int, int] = {}
        self._exhausted_partitions: set[int] = set()
        #: the length of each partition's privacy ledger as last reported: sent with every
        #: request, so that a node which lost its ledger refuses to train (ε never resets)
        self.ledger_events: dict[int, int] = {}
        self.last_round = RoundTrace(round=0)
        #: nodes that replied budget-exhausted: never sampled again in this run
        self.exhausted: set[int] = set()
        self._excluded_now = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Keep a copy of the global arrays to check replies against, then sample.

        FedAvg's round size (``fraction_train`` of all nodes), drawn by :meth:`_draw`;
        nodes in :attr:`exhausted` are never drawn: the round keeps its size while enough
        eligible nodes remain, and shrinks to the eligible ones after that.
        """
        server_round += self.round_offset
        self.current_arrays = arrays.copy()
        if self.fraction_train == 0.0:
            return []
        node_ids, all_nodes = self._draw(grid, self.fraction_train, self.min_train_nodes,
                                         skip_spent=True)  # fmt: skip
        self._excluded_now = sum(node in self.exhausted for node in all_nodes)
        self.sampled_now = node_ids
        log(INFO, "configure_train: Sampled %s nodes (out of %s; %s excluded: budget spent)",
            len(node_ids), len(all_nodes), self._excluded_now)  # fmt: skip
        config["server-round"] = server_round
        if self.ledger_events:
            partitions = sorted(self.ledger_events)
            config[SPENT_PARTITIONS] = partitions
            config[SPENT_EVENTS] = [self.ledger_events[p] for p in partitions]
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's, with the run's own round number and :meth:`_draw`'s nodes, sending the
        model :attr:`evaluation_model` makes of ``arrays`` (the server's reported one)."""
        if self.fraction_evaluate == 0.0:
            return []
        if self.evaluation_model is not None:
            arrays = self.evaluation_model(arrays)
        node_ids, all_nodes = self._draw(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        log(INFO, "configure_evaluate: Sampled %s nodes (out of %s)", len(node_ids),
            len(all_nodes))  # fmt: skip
        config["server-round"] = server_round + self.round_offset
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.EVALUATE)

    def _draw(
        self,
        grid: Grid,
        fraction: float,
        minimum: int,
        *,
        skip_spent: bool = False,
    ) -> tuple[list[int], list[int]]:
        """Draw FedAvg's number of nodes (``fraction`` of all, at least ``minimum``), with
        :attr:`sampler` over the nodes in partition order (:mod:`strategies.sampling`), but
        none in :attr:`exhausted` (``skip_spent``); return the drawn nodes and all
        connected ones."""
        # sample_size 0: only Flower's wait for min_available_nodes, then every node id
        _, all_nodes = sample_nodes(grid, self.min_available_nodes, 0)
        size = round_size(len(all_nodes), fraction, minimum)
        # a real draw is over partitions, which the seed fixes; and a resumed run knows
        # which partitions spent their budget, not which of its new node ids hold them
        unmapped = self._exhausted_partitions - set(self.node_partitions.values())
        if size < len(all_nodes) or (skip_spent and unmapped):
            self._ask_partitions(grid, all_nodes)
        excluding = self.exhausted if skip_spent else set()
        eligible = sorted((n for n in all_nodes if n not in excluding), key=self._partition_key)
        if size >= len(eligible):
            return eligible, all_nodes
        return self.sampler.sample(eligible, size), all_nodes

    def _ask_partitions(self, grid: Grid, nodes: list[int]) -> None:
        unknown = [n for n in nodes if n not in self.node_partitions and n not in self._asked]
        if not unknown:
            return
        self._asked.update(unknown)
        for node, partition in roll_call(grid, unknown, self.round_timeout).items():
            self._note_partition(node, partition)

    # --- checkpoints ----------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs of this strategy, keyed by partition (extend)."""
        exhausted = {self.node_partitions[n] for n in self.exhausted if n in self.node_partitions}
        return {
            "exhausted_partitions": sorted(exhausted | self._exhausted_partitions),
            "ledger_events": sorted(self.ledger_events.items()),
            "sampler": rng_state(self.sampler),
        }

    def resume_from(self, round_offset: int, state: dict[str, Any]) -> None:
        """Continue after ``round_offset`` rounds with the state of :meth:`checkpoint_state`."""
        self.round_offset = round_offset
        self._exhausted_partitions = set(state.get("exhausted_partitions", []))
        self.ledger_events = {int(p): int(n) for p, n in state.get("ledger_events", [])}
        if "sampler" in state:
            set_rng_state(self.sampler, state["sampler"])

    def _partition_key(self, node: int) -> tuple[int, int]:
        """Partition order: the same in every engine and in a resumed run (whose node ids
        are new); a node whose partition is unknown goes first, by node id."""
        return self.node_partitions.get(node, -1), node

    def _partition_order(self, msg: Message) -> tuple[int, int]:
        return self._partition_key(msg.metadata.src_node_id)

    def _note_partition(self, node: int, partition: int) -> None:
        self.node_partitions[node] = partition
        if partition in self._exhausted_partitions:
            self.exhausted.add(node)

    def _learn_partitions(self, trace: RoundTrace) -> None:
        for node, record in trace.client_records.items():
            if isinstance(partition := record.get(PARTITION_ID), int):
                self._note_partition(node, partition)
                if isinstance(history := record.get(HISTORY_SIGMA), list):
                    known = self.ledger_events.get(partition, 0)
                    self.ledger_events[partition] = max(known, len(history))

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Screening: skip '%s' == 1, reject non-finite/mismatched",
            BUDGET_EXHAUSTED)  # fmt: skip
        log(INFO, "\t├──> Rounds: at least %d accepted replies within %g s, else skipped",
            self.min_clients, self.round_timeout)  # fmt: skip
        super().summary()

    def metric_problem(self, metrics: MetricRecord) -> str | None:
        """Say what is wrong with a (non-skipped) reply's metrics; extend in subclasses."""
        return count_problem(metrics, self.weighted_by_key)

    def screen_round(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Start this round's trace; return the screened replies."""
        self.last_round = trace = RoundTrace(round=server_round)
        if self.current_arrays is None:
            raise AggregationError("No global arrays: call `configure_train` first.")
        replies = list(replies)
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        trace.failure_reasons = failure_reasons(errors, replies, self.sampled_now,
                                                self.round_timeout)  # fmt: skip
        trace.failures = len(trace.failure_reasons)
        accepted = screen_replies(valid, self.current_arrays, trace, self.metric_problem)
        self._learn_partitions(trace)
        # Replies arrive in any order, and float sums depend on it: aggregate in partition
        # order, the same in every engine and in a resumed run (whose node ids are new).
        accepted.sort(key=self._partition_order)
        trace.excluded_exhausted = self._excluded_now
        self.exhausted.update(trace.skipped_budget)
        if not accepted:
            log(WARNING, "aggregate_train: no reply left to aggregate in round %d", server_round)
        elif len(accepted) < self.min_clients:
            trace.skipped = (f"{len(accepted)} accepted repl{'y' if len(accepted) == 1 else 'ies'}"
                             f", fewer than min-clients = {self.min_clients}")  # fmt: skip
            log(WARNING, "aggregate_train: round %d skipped: %s", server_round, trace.skipped)
            return []
        return accepted

    def screen_aside(self, replies: list[Message]) -> list[Message]:
        """Screen replies kept out of this round's aggregation into its trace, as
        :meth:`screen_round` screens the others; return those it would have accepted."""
        if self.current_arrays is None:
            raise AggregationError("No global arrays: call `configure_train` first.")
        trace = self.last_round
        accepted = screen_replies(replies, self.current_arrays, trace, self.metric_problem)
        self._learn_partitions(trace)
        self.exhausted.update(trace.skipped_budget)
        return accepted

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, then aggregate the accepted ones; the trace is ``last_round``."""
        server_round += self.round_offset
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
        return super().aggregate_evaluate(
            server_round + self.round_offset, screen_eval_replies(replies)
        )


def failure_reasons(
    errors: list[Message], replies: list[Message], sampled: list[int], timeout: float
) -> dict[int, str]:
    """Each failed node's reason: the error it reported, or no reply within the timeout."""
    reasons = {msg.metadata.src_node_id: _error_text(msg) for msg in errors}
    answered = {msg.metadata.src_node_id for msg in replies}
    for node in sampled:
        if node not in answered:
            reasons[node] = f"no reply within round-timeout = {timeout:g} s"
    return reasons


def _error_text(msg: Message) -> str:
    """The error's last line: where a Ray or Flower wrapper puts a traceback first, that is
    the exception and its message (``... Message: injected crash ...``)."""
    lines = [line.strip(" '>\"") for line in str(msg.error.reason).splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    return f"error {msg.error.code}: {last[:300]}"


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
    robust : RobustConfig, optional
        Replace the weighted mean by a robust rule that keeps the weights
        (:mod:`strategies.robust`); default: the weighted mean.
    **fedavg_kwargs
        Passed to :class:`ReplyScreening` (``min_clients``, ``round_timeout``) and
        :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``, ``min_train_nodes``,
        ``weighted_by_key``, ``train_metrics_aggr_fn``, ...).
    """

    def __init__(self, *, robust: RobustConfig | None = None, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.robust = robust or RobustConfig(method="none", trim=0.0, norm_bound=1.0)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        if self.robust.method != "none":
            log(INFO, "\t├──> Robust aggregation: %s (trim %g, norm bound %g)",
                self.robust.method, self.robust.trim, self.robust.norm_bound)  # fmt: skip
        super().summary()

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
        arrays = aggregate_arrays(contents, weights, reference, self.robust)
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
