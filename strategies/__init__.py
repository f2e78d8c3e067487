"""Aggregation strategies: ours and the baselines, built from the run-config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord, RecordDict

from strategies.base import ReplyScreening, TracedFedAvg
from strategies.fairfed import FairFed
from strategies.qfedavg import TracedQFedAvg
from strategies.representation import RepresentationAware
from strategies.sampling import round_size
from strategies.screened_clipping import ScreenedFixedClipping
from task.config import RunConfig
from task.wire import ARRAYS_RECORD, CONFIG_RECORD, NUM_EXAMPLES

MetricsAggregator = Callable[[list[RecordDict], str], MetricRecord]
#: What :func:`build_strategy` returns: a Flower strategy that keeps ``last_round``.
BuiltStrategy = ReplyScreening | ScreenedFixedClipping


def sampled_per_round(cfg: RunConfig, num_nodes: int) -> int:
    """Clients per training round, as the strategy draws them (at least 1)."""
    return round_size(num_nodes, cfg.fraction_train)


def build_strategy(
    cfg: RunConfig,
    group_names: list[str],
    *,
    num_nodes: int,
    train_metrics_aggr_fn: MetricsAggregator,
    evaluate_metrics_aggr_fn: MetricsAggregator,
) -> BuiltStrategy:
    """The strategy named by ``strategy``, wrapped in central DP when ``dp.mode`` asks.

    Central DP uses Flower's server-side fixed-clipping wrapper (screening replies before
    it clips, see :class:`ScreenedFixedClipping`) without its accountant
    (which only accepts unweighted FedAvg); ``server/central_accountant.py`` accounts for the
    weights actually used, round by round.
    """
    inner = _base_strategy(
        cfg,
        group_names,
        train_metrics_aggr_fn=train_metrics_aggr_fn,
        evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
    )
    if not cfg.dp.central:
        return inner
    return ScreenedFixedClipping(
        inner,
        noise_multiplier=cfg.dp.central_noise,
        clipping_norm=cfg.dp.central_clip,
        num_sampled_clients=sampled_per_round(cfg, num_nodes),
    )


def _base_strategy(
    cfg: RunConfig,
    group_names: list[str],
    *,
    train_metrics_aggr_fn: MetricsAggregator,
    evaluate_metrics_aggr_fn: MetricsAggregator,
) -> ReplyScreening:
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 2,
        "weighted_by_key": NUM_EXAMPLES,
        "arrayrecord_key": ARRAYS_RECORD,
        "configrecord_key": CONFIG_RECORD,
        "train_metrics_aggr_fn": train_metrics_aggr_fn,
        "evaluate_metrics_aggr_fn": evaluate_metrics_aggr_fn,
        "min_clients": cfg.min_clients,
        "round_timeout": cfg.round_timeout,
        "sample_seed": cfg.seed,
    }
    if cfg.strategy == "qfedavg":  # its own step, no weighted mean to make robust
        return TracedQFedAvg(
            client_learning_rate=cfg.fair.qfedavg_learning_rate, q=cfg.fair.qfedavg_q, **common
        )
    common["robust"] = cfg.robust
    if cfg.strategy == "representation":
        return RepresentationAware(
            alpha=cfg.fair.alpha, cap=cfg.fair.cap, group_names=group_names, **common
        )
    if cfg.strategy == "fairfed":
        return FairFed(beta=cfg.fair.fairfed_beta, **common)
    return TracedFedAvg(**common)
