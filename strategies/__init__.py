"""Aggregation strategies: ours and the baselines, built from the run-config."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy

from task.config import RunConfig

MetricsAggregator = Callable[[list[RecordDict], str], MetricRecord]


def build_strategy(
    cfg: RunConfig,
    group_names: list[str],
    *,
    train_metrics_aggr_fn: MetricsAggregator,
    evaluate_metrics_aggr_fn: MetricsAggregator,
) -> Strategy:
    """The strategy named by ``strategy`` with its settings from ``cfg``."""
    return FedAvg(
        fraction_train=cfg.fraction_train,
        min_train_nodes=2,
        min_available_nodes=2,
        train_metrics_aggr_fn=train_metrics_aggr_fn,
        evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
    )
