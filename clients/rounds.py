"""One client round as plain functions: weights in, weights and metrics out (no Flower)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clients.local import ClientRuntime
from clients.private_round import DPRandomness, PrivateRound, run_private_round
from clients.training import TrainResult, local_training, train
from task import wire
from task.augment import synthesized_rows
from task.config import RunConfig
from task.data import Encoded, concat, group_counts
from task.inference import predict
from task.model import exchanged_state, load_exchanged


@dataclass
class TrainOutcome:
    """The reply: weights, the MetricRecord values, the ``client`` ConfigRecord values."""

    weights: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    client_record: dict[str, Any]
    ledger_state: dict[str, Any] | None = None


def local_gap(runtime: ClientRuntime, data: Encoded) -> float:
    """Max − min accuracy over the groups present in ``data`` (FairFed's local metric)."""
    predictions, _ = predict(runtime.model, data)
    correct = (predictions == data.labels).double()
    accuracies = [float(correct[data.groups == g].mean()) for g in data.groups.unique()]
    return max(accuracies) - min(accuracies) if accuracies else 0.0


def population_shares(
    cfg: RunConfig, server_config: Mapping[str, Any], num_groups: int
) -> np.ndarray | None:
    """The server's group shares of this round (:data:`~task.wire.POPULATION_SHARES`) if
    ``fair.local-shares = "population"`` and the server sent them, else None (round 1, or
    a strategy that sends none: the client's own shares set its weights).

    Whatever the server sends, the sampling rates stay at most the plan's q and a
    post-clip weight at most ``fair.local-max-weight``: the shares move the weights, never
    a record's ε.
    """
    sent = server_config.get(wire.POPULATION_SHARES)
    if cfg.fair.local_shares != "population" or sent is None:
        return None
    shares = np.asarray(sent, dtype=np.float64)
    if shares.shape != (num_groups,) or not np.all(np.isfinite(shares) & (shares > 0)):
        raise ValueError(
            f"train config '{wire.POPULATION_SHARES}' must hold {num_groups} finite shares "
            f"> 0 (one per group), got {sent!r}"
        )
    return shares / shares.sum()


def _plain_round(
    cfg: RunConfig, runtime: ClientRuntime, counts: np.ndarray, seed: int,
    population: np.ndarray | None = None,
) -> TrainResult:  # fmt: skip
    """Train without DP (``dp.mode`` off or central); weights from the true counts, and
    augmented examples as plain rows (no per-record privacy unit to keep), except that
    ``augment.variant-loss = "worst"`` needs a record's variants beside it."""
    data = runtime.train
    if cfg.augment.variant_loss == "mean":
        data = data.with_variants_as_rows()
    if runtime.public is not None:
        public = synthesized_rows(runtime.public, counts, min_share=cfg.augment.min_share)
        data = concat(data, public)
    local = local_training(cfg, runtime.model, data, counts, seed=seed, population=population)
    return train(
        runtime.model,
        local.optimizer,
        local.loader,
        epochs=cfg.train.local_epochs,
        weighting=local.weighting,
        variant_loss=cfg.augment.variant_loss,
    )


def _metrics(
    result: TrainResult | None,
    num_examples: int,
    counts: np.ndarray,
    fair_metric: float,
    epsilon: float,
) -> dict[str, Any]:
    """The MetricRecord: identical keys in every reply, as Flower's aggregation requires.

    ``epsilon`` is the cumulative ε; without local DP it is ``inf`` (no guarantee).
    """
    return {
        wire.EPSILON: epsilon,
        wire.NUM_EXAMPLES: num_examples,
        wire.TRAIN_LOSS: result.loss if result else 0.0,
        wire.TRAIN_ACCURACY: result.accuracy if result else 0.0,
        wire.TRAIN_SECONDS: result.seconds if result else 0.0,
        wire.BUDGET_EXHAUSTED: int(result is None),
        wire.GROUP_COUNTS: [float(c) for c in counts],
        wire.FAIR_METRIC: fair_metric,
    }


def _privacy_record(cfg: RunConfig, private: PrivateRound, secure_rng: bool) -> dict[str, Any]:
    history = private.ledger.history
    return {
        wire.EPSILON: private.ledger.epsilon(private.delta),
        wire.DELTA: private.delta,
        wire.BUDGET_EPSILON: cfg.dp.target_epsilon,
        wire.ACCOUNTANT: cfg.dp.accountant,
        wire.NOISE_MULTIPLIER: private.noise_multiplier,
        wire.HISTORY_SIGMA: [float(s) for s, _, _ in history],
        wire.HISTORY_Q: [float(q) for _, q, _ in history],
        wire.HISTORY_STEPS: [int(n) for _, _, n in history],
        wire.BUDGET_EXHAUSTED: private.result is None,
        wire.SECURE_RNG: secure_rng,
    }


def train_round(
    cfg: RunConfig,
    runtime: ClientRuntime,
    global_weights: dict[str, torch.Tensor],
    server_config: Mapping[str, Any],
    *,
    node_id: int,
    partition_id: int,
    ledger_state: dict[str, Any],
    secure_rng: bool = False,
) -> TrainOutcome:
    """Load the global weights, train locally (with DP-SGD when ``dp.mode`` is local).

    Randomness (batches, dropout, DP noise) is seeded from the run seed, the round and the
    partition — not the node id, which Flower draws anew per registration — so simulation
    and deployment train identically; with ``secure_rng`` the DP randomness (count noise,
    Poisson batches, DP-SGD noise) comes from OS entropy instead (:class:`DPRandomness`).
    """
    load_exchanged(runtime.model, global_weights)
    server_round = int(server_config.get(wire.SERVER_ROUND, 0))
    seed = cfg.seed * 100_003 + server_round * 1_009 + partition_id
    torch.manual_seed(seed)
    fair_metric = local_gap(runtime, runtime.eval) if cfg.strategy == "fairfed" else 0.0
    counts = group_counts(runtime.train, len(runtime.groups))
    population = population_shares(cfg, server_config, len(runtime.groups))
    record: dict[str, Any] = {wire.NODE_ID: str(node_id), wire.PARTITION_ID: partition_id}
    new_state = None
    if cfg.dp.local:
        private = run_private_round(
            cfg, runtime.model, runtime.train, counts, ledger_state=ledger_state,
            randomness=DPRandomness(seed, secure=secure_rng), public_pool=runtime.public,
            population=population,
        )  # fmt: skip
        result, new_state = private.result, private.ledger.to_state()
        sent_counts = private.released_counts if result else np.zeros_like(counts)
        record |= _privacy_record(cfg, private, secure_rng)
    else:
        result, sent_counts = _plain_round(cfg, runtime, counts, seed, population), counts
    weights = exchanged_state(runtime.model)
    record[wire.BYTES_SENT] = sum(t.numel() * t.element_size() for t in weights.values())
    epsilon = float(record.get(wire.EPSILON, math.inf))
    metrics = _metrics(result, len(runtime.train), np.asarray(sent_counts), fair_metric, epsilon)
    return TrainOutcome(weights, metrics, record, new_state)


def evaluate_round(runtime: ClientRuntime, global_weights: dict[str, torch.Tensor]) -> dict:
    """Accuracy and loss of the global weights on the local held-out split."""
    load_exchanged(runtime.model, global_weights)
    predictions, loss = predict(runtime.model, runtime.eval)
    accuracy = float((predictions == runtime.eval.labels).double().mean())
    return {
        wire.NUM_EXAMPLES: len(runtime.eval),
        wire.EVAL_LOSS: loss,
        wire.EVAL_ACCURACY: accuracy,
    }
