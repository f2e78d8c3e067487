"""Aggregation strategies: ours and the baselines, built from the run-config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from strategies.base import TracedFedAvg
from strategies.fairfed import FairFed
from strategies.qfedavg import TracedQFedAvg
from strategies.representation import RepresentationAware
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
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 2,
        "train_metrics_aggr_fn": train_metrics_aggr_fn,
        "evaluate_metrics_aggr_fn": evaluate_metrics_aggr_fn,
    }
    if cfg.strategy == "representation":
        return RepresentationAware(
            alpha=cfg.fair.alpha, cap=cfg.fair.cap, group_names=group_names, **common
        )
    if cfg.strategy == "fairfed":
        return FairFed(beta=cfg.fair.fairfed_beta, **common)
    if cfg.strategy == "qfedavg":
        return TracedQFedAvg(
            client_learning_rate=cfg.train.learning_rate, q=cfg.fair.qfedavg_q, **common
        )
    return TracedFedAvg(**common)
