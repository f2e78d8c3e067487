"""Local training: per-example weights, loader, optimizer and the epochs (no Flower)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from opacus.data_loader import wrap_collate_with_empty
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from clients.group_sampling import GroupPoissonSampler, expected_batch, group_rates
from task.config import RunConfig
from task.data import Encoded
from task.inference import logits_of
from task.privacy_plan import poisson_rate, poisson_steps_per_epoch


@dataclass(frozen=True)
class TrainResult:
    """What a local training run reports."""

    loss: float
    accuracy: float
    steps: int
    seconds: float
    num_examples: int


def make_loader(
    data: Encoded, weights: torch.Tensor, batch_size: int, *, seed: int, shuffle: bool = True
) -> DataLoader:
    """Batches of (inputs, attention mask, label, weight), shuffled by ``seed``."""
    dataset = TensorDataset(data.model_input, data.attention_mask, data.labels, weights)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def per_example_loss(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Cross-entropy per example and the number of correct predictions."""
    inputs, attention_mask, labels = batch[0], batch[1], batch[2]
    logits = logits_of(model, inputs, attention_mask)
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    return losses, int((logits.argmax(-1) == labels).sum())


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    epochs: int,
    weighting: str = "off",
) -> TrainResult:
    """Run ``epochs`` over ``loader``; the 4th tensor of a batch is its per-example weight.

    ``weighting``: ``"pre-clip"`` multiplies each example's loss by its weight;
    ``"post-clip"`` hands the weights to a weighted DP optimizer (``set_sample_weights``),
    which scales the *clipped* per-sample gradients — without DP there is no clip, so it is
    the same as a loss weight; ``"off"`` ignores them.
    """
    model.train()
    start = time.perf_counter()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    weighted_optimizer = hasattr(optimizer, "set_sample_weights")
    for _ in range(epochs):
        for batch in loader:
            optimizer.zero_grad()
            steps += 1
            if batch[0].shape[0] == 0:  # an empty Poisson draw still takes its noise step
                if hasattr(optimizer, "step_on_empty_batch"):  # (without DP: nothing to do)
                    optimizer.step_on_empty_batch()
                continue
            losses, batch_correct = per_example_loss(model, batch)
            weights = batch[3]
            if weighting == "post-clip" and weighted_optimizer:
                optimizer.set_sample_weights(weights)  # type: ignore[attr-defined]
                loss = losses.mean()
            elif weighting != "off":
                loss = (losses * weights).mean()
            else:
                loss = losses.mean()
            loss.backward()
            optimizer.step()
            total_loss += float(losses.detach().sum())
            correct += batch_correct
            seen += int(losses.shape[0])
    return TrainResult(
        loss=total_loss / max(seen, 1),
        accuracy=correct / max(seen, 1),
        steps=steps,
        seconds=time.perf_counter() - start,
        num_examples=len(loader.dataset),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class LocalTraining:
    """What one participation trains with, private or not."""

    weighting: str  # "off", "pre-clip", "post-clip" or "sampling"
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    max_weight: float  # w_max of the per-example weights (1 when unweighted)
    #: ``sampling``: (q_max, expected batch size) of the group-balanced Poisson loader
    group_sampling: tuple[float, float] | None = None


def weights_from_released(
    released: np.ndarray, groups: torch.Tensor, *, alpha: float, max_weight: float
) -> tuple[torch.Tensor, float]:
    """Per-example weights ∝ (1/released share of the group)^α, capped at ``max_weight``.

    Normalised so the expected weight under the released shares is 1; only released
    numbers enter, so this is post-processing of the release.
    """
    clipped = np.clip(released, 1.0, None)  # a group never shows below one example
    shares = clipped / clipped.sum()
    raw = shares ** (-alpha)
    per_group = np.minimum(raw / float((shares * raw).sum()), max_weight)
    # w_max from the float32 values actually used, so no weight rounds up above it.
    per_group_t = torch.tensor(np.maximum(per_group, 0.0), dtype=torch.float32)
    return per_group_t[groups], max(1.0, float(per_group_t.max()))


def local_training(
    cfg: RunConfig, model: nn.Module, data: Encoded, counts: np.ndarray, *, seed: int
) -> LocalTraining:
    """Weights from ``counts`` (released ones under DP), the loader and the optimizer."""
    weighting = cfg.fair.local_weighting if cfg.fair.local_alpha > 0 else "off"
    params = [p for p in model.parameters() if p.requires_grad]
    if weighting == "sampling":
        loader, sampled = group_balanced_loader(cfg, data, counts, seed=seed)
        return LocalTraining(weighting, loader, cfg.train.make_optimizer(params), 1.0, sampled)
    weights, w_max = torch.ones(len(data)), 1.0
    if weighting != "off":
        weights, w_max = weights_from_released(
            counts, data.groups, alpha=cfg.fair.local_alpha, max_weight=cfg.fair.local_max_weight
        )
    loader = make_loader(data, weights, cfg.train.batch_size, seed=seed)
    return LocalTraining(weighting, loader, cfg.train.make_optimizer(params), w_max)


def group_balanced_loader(
    cfg: RunConfig, data: Encoded, counts: np.ndarray, *, seed: int
) -> tuple[DataLoader, tuple[float, float]]:
    """Poisson batches with per-group rates from ``counts`` (released ones under DP).

    The largest rate is the plain Poisson rate ``q = 1/ceil(n/B)`` of the privacy plan, so
    the plan, σ and the accountant are those of unweighted DP-SGD; scarcer groups keep
    rate q and commoner ones are drawn less (:mod:`clients.group_sampling`).
    """
    q_max = poisson_rate(len(data), cfg.train.batch_size)
    num_groups = len(counts)
    per_group, _ = weights_from_released(
        counts, torch.arange(num_groups), alpha=cfg.fair.local_alpha,
        max_weight=cfg.fair.local_max_weight,
    )  # fmt: skip
    rates = group_rates(per_group.double().numpy(), counts, max_rate=q_max)
    dataset = TensorDataset(data.model_input, data.attention_mask, data.labels,
                            torch.ones(len(data)))  # fmt: skip
    sampler = GroupPoissonSampler(
        torch.from_numpy(rates)[data.groups], steps=poisson_steps_per_epoch(q_max),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    first = dataset[0]
    collate = wrap_collate_with_empty(
        collate_fn=default_collate, sample_empty_shapes=[(0, *x.shape) for x in first],
        dtypes=[x.dtype for x in first],
    )  # fmt: skip
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    return loader, (q_max, expected_batch(counts, rates))
