"""One client round as plain functions: weights in, weights and metrics out (no Flower)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clients.local import ClientRuntime, local_group_weights
from clients.training import make_loader, predict, train
from task.config import RunConfig
from task.data import Encoded, group_counts
from task.model import exchanged_state, load_exchanged


@dataclass
class TrainOutcome:
    weights: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    extra_records: dict[str, Any] = field(default_factory=dict)


def local_gap(runtime: ClientRuntime, data: Encoded) -> float:
    """Max − min accuracy over the groups present in ``data`` (FairFed's local metric)."""
    predictions, _ = predict(runtime.model, data)
    correct = (predictions == data.labels).double()
    accuracies = [float(correct[data.groups == g].mean()) for g in data.groups.unique()]
    return max(accuracies) - min(accuracies) if accuracies else 0.0


def example_weights(cfg: RunConfig, data: Encoded) -> torch.Tensor:
    if cfg.fair.local_weighting == "off" or cfg.fair.local_alpha == 0:
        return torch.ones(len(data))
    return local_group_weights(data.groups, cfg.fair.local_alpha)


def train_round(
    cfg: RunConfig,
    runtime: ClientRuntime,
    global_weights: dict[str, torch.Tensor],
    server_config: Mapping[str, Any],
    state: Any,
) -> TrainOutcome:
    """Load the global weights, train locally, return the update and the reply metrics."""
    load_exchanged(runtime.model, global_weights)
    server_round = int(server_config.get("server-round", 0))
    fair_metric = local_gap(runtime, runtime.eval) if cfg.strategy == "fairfed" else 0.0
    weights = example_weights(cfg, runtime.train)
    loader = make_loader(
        runtime.train, weights, cfg.train.batch_size, seed=cfg.seed * 1000 + server_round
    )
    params = [p for p in runtime.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate)
    result = train(
        runtime.model,
        optimizer,
        loader,
        epochs=cfg.train.local_epochs,
        pre_clip_weights=cfg.fair.local_weighting != "off",
    )
    counts = group_counts(runtime.train, len(runtime.groups))
    metrics: dict[str, Any] = {
        "num-examples": result.num_examples,
        "train-loss": result.loss,
        "train-accuracy": result.accuracy,
        "train-seconds": result.seconds,
        "epsilon": 0.0,
        "budget-exhausted": 0,
        "group-counts": [float(c) for c in np.asarray(counts)],
        "fair-metric": fair_metric,
    }
    return TrainOutcome(weights=exchanged_state(runtime.model), metrics=metrics)


def evaluate_round(runtime: ClientRuntime, global_weights: dict[str, torch.Tensor]) -> dict:
    """Accuracy and loss of the global weights on the local held-out split."""
    load_exchanged(runtime.model, global_weights)
    predictions, loss = predict(runtime.model, runtime.eval)
    accuracy = float((predictions == runtime.eval.labels).double().mean())
    return {"num-examples": len(runtime.eval), "eval-loss": loss, "eval-accuracy": accuracy}
