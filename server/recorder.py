"""Turns what happened in a round into the contract's round record, in one place.

Flower calls :meth:`RoundRecorder.evaluate` after every round (``evaluate_fn`` of
``Strategy.start``); the strategy's metric-aggregation hooks hand the recorder the raw
client replies. The recorder evaluates the global model (the moving average of the
aggregates, :mod:`server.model_average`), writes results, logs one line.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from server import checkpoint
from server.central_accountant import CentralAccountant
from server.checkpoint import Checkpoint
from server.evaluation import GlobalEvaluator
from server.model_average import ModelAverage
from server.records import RunDirectory, rounds_without_survivors, to_json
from strategies.screening import RoundTrace
from task import wire
from task.fairness import client_spread


class TracedStrategy(Protocol):
    """What the recorder reads of a strategy: the trace of its latest ``aggregate_train``,
    and the state a checkpoint keeps."""

    @property
    def last_round(self) -> RoundTrace: ...

    def checkpoint_state(self) -> dict[str, Any]: ...


class RoundRecorder:
    """Collects one round's facts and writes ``results.json``/``rounds.csv`` after each."""

    def __init__(
        self,
        run_dir: RunDirectory,
        evaluator: GlobalEvaluator,
        *,
        num_rounds: int,
        central: CentralAccountant | None = None,
        ema_decay: float = 0.0,
    ) -> None:
        """``ema_decay``: the reported model's (:class:`ModelAverage`); the run's default is
        pyproject's ``ema-decay``, 0 here reports each round's aggregate as it is."""
        self.run_dir = run_dir
        self.evaluator = evaluator
        self.strategy: TracedStrategy | None = None
        self.central = central
        self.num_rounds = num_rounds
        self.model_average = ModelAverage(ema_decay)
        #: the global arrays last folded into the average (or round 0's): Flower passes the
        #: same record again after a round that aggregated nothing, and passes each round's
        #: to configure_evaluate and then evaluate_fn; none may be averaged in twice
        self._last_arrays: ArrayRecord | None = None
        self.rounds: list[dict[str, Any]] = []
        self.privacy: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self._train_replies: list[RecordDict] = []
        self._eval_accuracies: list[float] = []
        self._clock = time.perf_counter()
        #: rounds done before this process started (a resumed run); Flower counts from 1
        self.round_offset = 0

    # --- checkpoints ----------------------------------------------------------------
    def resume_from(self, checkpoint: Checkpoint) -> None:
        """Continue after ``checkpoint``: its rounds, privacy reports and accountant."""
        self.round_offset = checkpoint.round
        self.rounds = list(checkpoint.state["rounds"])
        self.privacy = dict(checkpoint.state["privacy"])
        self.extra = dict(checkpoint.state["extra"])
        self.model_average.restore(checkpoint.averaged, like=checkpoint.arrays)
        if self.central is not None:
            self.central.resume(checkpoint.state["central_history"])

    def _checkpoint(self, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        state = {
            "rounds": self.rounds,
            "privacy": self.privacy,
            "extra": self.extra,
            "central_history": self.central.history if self.central is not None else [],
            "strategy": self.strategy.checkpoint_state() if self.strategy is not None else {},
        }
        checkpoint.save(
            self.run_dir.path,
            Checkpoint(server_round, arrays, to_json(state), averaged=self._averaged()),
        )

    def _averaged(self) -> dict[str, np.ndarray] | None:
        """The average a resumed run continues from; None where it is the aggregate."""
        return self.model_average.current if self.model_average.decay else None

    def watch(self, strategy: TracedStrategy) -> None:
        """Read the strategy's ``last_round`` trace (weights, skips) after each round."""
        self.strategy = strategy

    # --- hooks given to the strategy -------------------------------------------------
    def aggregate_train_metrics(self, contents: list[RecordDict], key: str) -> MetricRecord:
        """Flower's weighted metric average, keeping the replies for the round record."""
        self._train_replies = list(contents)
        return aggregate_metricrecords(same_shape_metrics(contents), key)

    def aggregate_eval_metrics(self, contents: list[RecordDict], key: str) -> MetricRecord:
        """Flower's weighted metric average; the client spread takes each valid accuracy."""
        records: list[Any] = [next(iter(c.metric_records.values())) for c in contents]
        accuracies = [r.get(wire.EVAL_ACCURACY) for r in records]
        self._eval_accuracies = [float(a) for a in accuracies if is_fraction(a)]
        if len(self._eval_accuracies) < len(records):
            left_out = len(records) - len(self._eval_accuracies)
            log(WARNING, "%d evaluation replies without '%s' in [0, 1]: left out of the "
                "client spread", left_out, wire.EVAL_ACCURACY)  # fmt: skip
        return aggregate_metricrecords(same_shape_metrics(contents), key)

    def _observe_privacy(self, node: int, record: dict[str, Any]) -> None:
        """Keep a client's latest privacy report, under the node id Flower saw it from;
        a malformed report is logged, not fatal."""
        if wire.EPSILON not in record:
            return  # no local DP
        try:
            entry = self._privacy_entry(record)
            # a resumed run's nodes have new ids: one entry per partition, the newest
            part = entry["partition"]
            same = [n for n, e in self.privacy.items() if part >= 0 and e["partition"] == part]
            for other in same:
                del self.privacy[other]
            self.privacy[str(node)] = entry
        except (KeyError, TypeError, ValueError) as error:
            log(WARNING, "node %d sent a malformed privacy record (%r): not reported", node, error)

    @staticmethod
    def _privacy_entry(record: dict[str, Any]) -> dict[str, Any]:
        return {
            "epsilon": float(record[wire.EPSILON]),
            "delta": float(record[wire.DELTA]),
            "budget_epsilon": float(record[wire.BUDGET_EPSILON]),
            "accountant": str(record[wire.ACCOUNTANT]),
            "history": [
                [float(s), float(q), int(n)]
                for s, q, n in zip(
                    record[wire.HISTORY_SIGMA],
                    record[wire.HISTORY_Q],
                    record[wire.HISTORY_STEPS],
                    strict=True,
                )
            ],
            "noise_multiplier": float(record[wire.NOISE_MULTIPLIER]),
            "stopped_by_budget": bool(record[wire.BUDGET_EXHAUSTED]),
            "secure_rng": bool(record.get(wire.SECURE_RNG, False)),
            "partition": int(record.get(wire.PARTITION_ID, -1)),
        }

    # --- evaluate_fn -----------------------------------------------------------------
    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate the reported model (the average including ``arrays``, this round's
        aggregate); record and write the round, then checkpoint both (round 0: the
        baseline only, and nothing when resuming)."""
        if server_round == 0:
            self._last_arrays = arrays
            if not self.round_offset:
                self.extra["initial"] = self.evaluator.evaluate(arrays.to_torch_state_dict())
                self.run_dir.write_results(self.results())  # a run stopped now keeps it
            self._clock = time.perf_counter()
            return None
        server_round += self.round_offset
        aggregate = {name: array.numpy() for name, array in arrays.items()}
        reported = self._reported(arrays, aggregate)
        global_metrics = self.evaluator.evaluate(
            {name: torch.from_numpy(value) for name, value in reported.items()}
        )
        record = self._round_record(server_round, global_metrics)
        self.rounds.append(record)
        self.run_dir.append_round(record)
        results = self.results()
        # "complete" only once the checkpoint is saved too: a complete run is never
        # relabelled, so a kill in between must leave it "running" (then interrupted)
        self.run_dir.write_results(results | {"status": "running"})
        self._checkpoint(server_round, aggregate)
        if results["status"] != "running":
            self.run_dir.write_results(results)
        if results["status"] == "complete":
            self.run_dir.point_latest()
        self._log(record)
        self._train_replies, self._eval_accuracies = [], []
        return MetricRecord({k: v for k, v in global_metrics.items() if isinstance(v, float | int)})

    def reported_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model the clients evaluate this round (the strategy's ``configure_evaluate``
        hook): the reported model, so that their metrics describe the same model as the
        global ones. Without averaging, ``arrays`` as they are."""
        if not self.model_average.decay:
            return arrays
        aggregate = {name: array.numpy() for name, array in arrays.items()}
        reported = self._reported(arrays, aggregate)
        return ArrayRecord({name: Array(np.asarray(value)) for name, value in reported.items()})

    def _reported(
        self, arrays: ArrayRecord, aggregate: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The model to report this round: the average with this round's aggregate folded
        in (once), or as it was where the round aggregated nothing."""
        if arrays is self._last_arrays:
            current = self.model_average.current
            return current if current is not None else aggregate
        self._last_arrays = arrays
        return self.model_average.update(aggregate)

    def _round_record(self, server_round: int, global_metrics: dict[str, Any]) -> dict:
        now = time.perf_counter()
        wall, self._clock = now - self._clock, now
        trace = self.strategy.last_round if self.strategy is not None else None
        if trace is not None and trace.round != server_round:
            trace = None  # the strategy did not aggregate this round: no weights to report
        traced: dict[str, Any] = trace.to_json() if trace is not None else {}
        for node, client_record in (trace.client_records if trace is not None else {}).items():
            self._observe_privacy(node, client_record)
        metrics: list[Any] = [next(iter(c.metric_records.values())) for c in self._train_replies]
        record: dict[str, Any] = {
            "round": server_round,
            "wall_s": wall,
            "client_train_s": float(sum(float(m[wire.TRAIN_SECONDS]) for m in metrics)),
            "num_clients": len(metrics),
            "failures": int(traced.get("failures", 0)),
            "global": global_metrics,
            "clients": client_spread(self._eval_accuracies) if self._eval_accuracies else {},
            "weights": traced.get("weights", {}),
        }
        for name in ("skipped_budget", "excluded_exhausted", "rejected", "failure_reasons",
                     "skipped", "prevalence", "extras"):  # fmt: skip
            if name in traced:
                record[name] = traced[name]
        for node in record.get("skipped_budget", []):
            if node in self.privacy:
                self.privacy[node]["stopped_by_budget"] = True
        record["bytes_sent"] = self._bytes_sent()
        if self.central is not None:  # charged by the strategy when it added the noise
            record["central_epsilon"] = self.central.epsilon()
        return record

    def _bytes_sent(self) -> dict[str, int]:
        sent: dict[str, int] = {}
        for content in self._train_replies:
            record: Any = content.config_records.get(wire.CLIENT_RECORD)
            try:
                if record is not None:
                    sent[str(record[wire.NODE_ID])] = int(record[wire.BYTES_SENT])
            except (KeyError, TypeError, ValueError) as error:
                log(WARNING, "a client record without a valid node-id/bytes-sent (%r)", error)
        return sent

    @property
    def complete(self) -> bool:
        """Is every round of the run recorded?"""
        return len(self.rounds) == self.num_rounds

    @property
    def status(self) -> str:
        """``results.json``'s status: every round recorded, and none without a surviving
        client (unless the run injected faults), is complete; such a round fails it."""
        if not self.complete:
            return "running"
        return (
            "failed" if rounds_without_survivors(self.rounds, self.run_dir.config) else "complete"
        )

    def results(self) -> dict[str, Any]:
        """The whole ``results.json`` so far."""
        final = dict(self.rounds[-1]["global"]) if self.rounds else {}
        epsilons = [p["epsilon"] for p in self.privacy.values()]
        final["max_epsilon"] = max(epsilons) if epsilons else None
        results = {
            "status": self.status,
            "config": self.run_dir.config,
            "rounds": self.rounds,
            "privacy": self.privacy,
            "final": final,
            **self.extra,
        }
        if self.central is not None:
            results["central_privacy"] = self.central.report()
            final["central_epsilon"] = self.central.epsilon()
        return results

    def _log(self, record: dict[str, Any]) -> None:
        g = record["global"]
        eps = [p["epsilon"] for p in self.privacy.values()]
        eps_text = f" max_eps={max(eps):.2f}" if eps else ""
        if record["failures"] or record.get("rejected"):
            eps_text += f" failed={record['failures']} rejected={len(record.get('rejected', {}))}"
        if record.get("skipped"):
            eps_text += f" SKIPPED ({record['skipped']})"
        log(
            INFO,
            "round %d/%d acc=%.3f bal_acc=%.3f worst=%.3f gap=%.3f clients=%d wall=%.1fs%s",
            record["round"], self.num_rounds, g["accuracy"], g["balanced_accuracy"],
            g["worst_group_accuracy"], g["group_accuracy_gap"], record["num_clients"],
            record["wall_s"], eps_text,
        )  # fmt: skip


def is_fraction(value: object) -> bool:
    """A finite number in [0, 1] (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def same_shape_metrics(contents: list[RecordDict]) -> list[RecordDict]:
    """The replies' MetricRecords restricted to the keys every reply has in one shape.

    Flower's ``aggregate_metricrecords`` zips list metrics strictly and adds a list to a
    scalar without checking, so one client sending ``group-counts`` of another length
    (or a list where the others send a number) would crash the server; the aggregate is
    informational, so such a key is left out (and logged) instead.
    """
    records: list[Any] = [next(iter(c.metric_records.values())) for c in contents]
    shapes: dict[str, set[int | None]] = {}
    for record in records:
        for key, value in record.items():
            shapes.setdefault(key, set()).add(len(value) if isinstance(value, list) else None)
    uniform = {k for k, s in shapes.items() if len(s) == 1 and all(k in r for r in records)}
    if dropped := sorted(set(shapes) - uniform):
        log(WARNING, "metrics %s differ in shape between replies: not aggregated", dropped)
    return [
        RecordDict(
            {wire.METRICS_RECORD: MetricRecord({k: v for k, v in r.items() if k in uniform})}
        )
        for r in records
    ]
