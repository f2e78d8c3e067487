"""Local training: per-example weights, loader, optimizer and the epochs (no Flower)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from opacus.data_loader import wrap_collate_with_empty
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from clients.group_sampling import (
    GroupPoissonSampler,
    expected_batch,
    group_rates,
    with_batch_floor,
)
from task.config import RunConfig
from task.data import Encoded, concat
from task.inference import logits_of, takes_row_axis
from task.privacy_plan import poisson_rate, poisson_steps_per_epoch


@dataclass(frozen=True)
class TrainResult:
    """What a local training run reports."""

    loss: float
    accuracy: float
    steps: int
    seconds: float
    num_examples: int


def record_tensors(data: Encoded, weights: torch.Tensor) -> TensorDataset:
    """One item per record: (inputs, attention mask, label, weight), and with
    counterfactuals its (k variant inputs, k masks, k real-variant flags)."""
    tensors = [data.model_input, data.attention_mask, data.labels, weights]
    if data.variants is not None and data.variant_valid is not None:
        n, k = data.variant_valid.shape
        variants = data.variants
        tensors += [
            variants.model_input.reshape(n, k, *variants.model_input.shape[1:]),
            variants.attention_mask.reshape(n, k, -1),
            data.variant_valid,
        ]
    return TensorDataset(*tensors)


def make_loader(
    data: Encoded, weights: torch.Tensor, batch_size: int, *, seed: int, shuffle: bool = True
) -> DataLoader:
    """Batches of :func:`record_tensors`, shuffled by ``seed``."""
    dataset = record_tensors(data, weights)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def per_example_loss(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Cross-entropy per example and the number of correct predictions."""
    inputs, attention_mask, labels = batch[0], batch[1], batch[2]
    logits = logits_of(model, inputs, attention_mask)
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    return losses, int((logits.argmax(-1) == labels).sum())


def with_variant_rows(batch: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A batch of records with variants as record-major rows (a record, then its k
    variants), and the (records, 1 + k) mask of real rows."""
    inputs, mask, labels, weights, v_inputs, v_mask, v_valid = batch
    rows = 1 + v_valid.shape[1]
    real = torch.cat([torch.ones_like(v_valid[:, :1]), v_valid], dim=1)
    flat = [
        torch.cat([inputs[:, None], v_inputs], dim=1).flatten(0, 1),
        torch.cat([mask[:, None], v_mask], dim=1).flatten(0, 1),
        labels.repeat_interleave(rows),
        weights.repeat_interleave(rows),
    ]
    return flat, real


def record_losses(losses: torch.Tensor, real: torch.Tensor, variant_loss: str) -> torch.Tensor:
    """Per record, the loss over its real rows: the ``"mean"``, or the ``"worst"`` row's."""
    if variant_loss == "worst":
        return losses.view(real.shape).masked_fill(~real, -torch.inf).amax(dim=1)
    share = real.to(losses.dtype)
    return (losses.view(real.shape) * share).sum(1) / share.sum(1)


def worst_rows(losses: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``(records, rows)`` bool: each record's real row of the largest loss, one per record.

    Under DP the optimizer averages a record's per-row gradients over this mask, which is
    the gradient of :func:`record_losses` with ``"worst"`` (worst-of-k augmentation,
    Engstrom et al., ICML 2019), still one clipped contribution per record."""
    worst = losses.detach().view(real.shape).masked_fill(~real, -torch.inf).argmax(dim=1)
    return nn.functional.one_hot(worst, real.shape[1]).bool()


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    epochs: int,
    weighting: str = "off",
    variant_loss: str = "mean",
) -> TrainResult:
    """Run ``epochs`` over ``loader``; the 4th tensor of a batch is its per-example weight.

    ``weighting``: ``"pre-clip"`` multiplies each example's loss by its weight;
    ``"post-clip"`` hands the weights to a weighted DP optimizer (``set_sample_weights``),
    which scales the *clipped* per-sample gradients — without DP there is no clip, so it is
    the same as a loss weight; ``"off"`` ignores them. ``variant_loss``: a record's
    objective over itself and its counterfactual variants (:func:`record_losses`).
    """
    model.train()
    start = time.perf_counter()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(epochs):
        for batch in loader:
            optimizer.zero_grad()
            steps += 1
            if batch[0].shape[0] == 0:  # an empty Poisson draw still takes its noise step
                if hasattr(optimizer, "step_on_empty_batch"):  # (without DP: nothing to do)
                    optimizer.step_on_empty_batch()
                continue
            loss, losses, batch_correct = batch_loss(model, optimizer, batch, weighting,
                                                     variant_loss)  # fmt: skip
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


def batch_loss(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: list[torch.Tensor],
    weighting: str, variant_loss: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor, int]:  # fmt: skip
    """The loss to back-propagate, the per-row losses and the correct predictions; hands
    per-record weights and the variant mask to a weighted DP optimizer.

    With variants each record's objective is the mean loss over its real rows, or its worst
    row's (``variant_loss``). Under DP the optimizer takes the mean of a record's per-row
    gradients over those rows before clipping, which is exactly that objective's gradient:
    rows interact in no layer, so each row's per-sample gradient is its own loss's.
    """
    weighted_optimizer = hasattr(optimizer, "set_sample_weights")
    weights = batch[3]
    if len(batch) == 4:
        losses, correct = per_example_loss(model, batch)
        if weighting == "post-clip" and weighted_optimizer:
            optimizer.set_sample_weights(weights)  # type: ignore[attr-defined]
            return losses.mean(), losses, correct
        scale = weights if weighting != "off" else torch.ones_like(losses)
        return (losses * scale).mean(), losses, correct
    if weighted_optimizer and takes_row_axis(model):
        return _row_axis_loss(model, optimizer, batch, weighting, variant_loss)
    rows, real = with_variant_rows(batch)
    logits = logits_of(model, rows[0], rows[1])
    losses = nn.functional.cross_entropy(logits, rows[2], reduction="none")
    correct = _real_correct(logits, rows[2], real.flatten())
    if not weighted_optimizer:  # no per-sample gradients: the per-record mean, on the loss
        scale = weights if weighting != "off" else torch.ones_like(weights)
        per_record = record_losses(losses, real, variant_loss)
        return (per_record * scale).mean(), losses[real.flatten()], correct
    rows_used = worst_rows(losses, real) if variant_loss == "worst" else real
    optimizer.set_variant_mask(rows_used)  # type: ignore[attr-defined]
    if weighting == "post-clip":
        optimizer.set_sample_weights(weights)  # type: ignore[attr-defined]
    scale = weights if weighting == "pre-clip" else torch.ones_like(weights)
    loss = (losses * scale.repeat_interleave(real.shape[1])).mean()
    return loss, losses[real.flatten()], correct


def _real_correct(logits: torch.Tensor, labels: torch.Tensor, real: torch.Tensor) -> int:
    """Correct predictions among the real rows (a missing variant's masked repeat of its
    record is not counted)."""
    return int(((logits.argmax(-1) == labels) & real).sum())


def _row_axis_loss(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: list[torch.Tensor],
    weighting: str, variant_loss: str,
) -> tuple[torch.Tensor, torch.Tensor, int]:  # fmt: skip
    """:func:`batch_loss` with a record's rows on an axis of their own, (records, 1 + k, …).

    Opacus' per-sample gradient of a linear layer sums over every axis but the first, so
    the gradients come out per record, already the gradient of the record's (mean or worst) loss:
    no per-row gradient is materialised and regrouped (that costs more than the step)."""
    inputs, mask, labels, weights, v_inputs, v_mask, v_valid = batch
    real = torch.cat([torch.ones_like(v_valid[:, :1]), v_valid], dim=1)
    logits = logits_of(model, torch.cat([inputs[:, None], v_inputs], 1),
                       torch.cat([mask[:, None], v_mask], 1))  # fmt: skip
    rows_labels = labels[:, None].expand(real.shape)
    losses = nn.functional.cross_entropy(logits.flatten(0, 1), rows_labels.flatten(),
                                         reduction="none")  # fmt: skip
    correct = _real_correct(logits, rows_labels, real)
    if weighting == "post-clip":
        optimizer.set_sample_weights(weights)  # type: ignore[attr-defined]
    scale = weights if weighting == "pre-clip" else torch.ones_like(weights)
    per_record = record_losses(losses, real, variant_loss)
    return (per_record * scale).mean(), losses[real.flatten()], correct


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
    released: np.ndarray, groups: torch.Tensor, *, alpha: float, max_weight: float,
    population: np.ndarray | None = None,
) -> tuple[torch.Tensor, float]:  # fmt: skip
    """Per-example weights ∝ (1/share of the group)^α, capped at ``max_weight``.

    The shares are ``population`` (the server's estimate from every client's released
    counts) when given, else the client's own released shares. Normalised so the expected
    weight under the released shares is 1, over the groups the release shows (count > 0):
    a group it does not show neither enters the normaliser nor sets w_max, which sizes the
    post-clip noise (a rare group's huge 1/share would shrink every real weight while the
    noise stayed at the cap). Records of such a group (a count denoised to 0) get w_max.
    Only released numbers enter, so this is post-processing of the releases.
    """
    counts = np.clip(released, 0.0, None)
    shown = counts > 0
    if not shown.any():  # nothing released: every group alike
        shown, counts = np.ones_like(shown), np.ones_like(counts)
    shares = counts / counts.sum()
    reference = shares if population is None else population
    raw = _inverse_power(np.where(shown, reference, 1.0), alpha)
    per_group = np.minimum(raw / float((shares * raw).sum()), max_weight)
    # w_max from the float32 values actually used, so no weight rounds up above it.
    per_group_t = torch.tensor(np.maximum(per_group, 0.0), dtype=torch.float32)
    shown_t = torch.from_numpy(shown)
    w_max = max(1.0, float(per_group_t[shown_t].max()))
    per_group_t = torch.where(shown_t, per_group_t, torch.tensor(w_max, dtype=torch.float32))
    return per_group_t[groups], w_max


def _inverse_power(shares: np.ndarray, alpha: float) -> np.ndarray:
    """``shares ** -alpha``, or where that overflows (a tiny share, a large α) the same up to
    a common factor, from logs: the weights only need the ratios, and inf/inf is NaN."""
    with np.errstate(over="ignore"):
        raw = shares ** (-alpha)
    if np.isfinite(raw).all():
        return raw  # type: ignore[no-any-return]
    logs = -alpha * np.log(shares)
    return np.exp(logs - logs.max())  # type: ignore[no-any-return]


def local_training(
    cfg: RunConfig, model: nn.Module, data: Encoded, counts: np.ndarray, *, seed: int,
    public: Encoded | None = None, population: np.ndarray | None = None,
) -> LocalTraining:  # fmt: skip
    """Weights from ``counts`` (released ones under DP), the loader and the optimizer.

    ``population``: the server's group shares, which set the group weights instead of the
    client's own shares (``fair.local-shares = "population"``; every share > 0).

    ``public``: synthesized examples under DP. They join the Poisson draw at the private
    records' rate q, so the plan's q, steps and σ hold unchanged; being public, they cost
    no ε (without DP the caller appends them to ``data`` as plain rows).
    """
    weighting = cfg.fair.local_weighting if cfg.fair.local_alpha > 0 else "off"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = cfg.train.make_optimizer(params)
    rows = data if public is None else concat(data, public)
    weights, w_max = torch.ones(len(rows)), 1.0
    if weighting in ("post-clip", "pre-clip"):
        weights, w_max = weights_from_released(
            counts, rows.groups, alpha=cfg.fair.local_alpha, max_weight=cfg.fair.local_max_weight,
            population=population,
        )  # fmt: skip
    if weighting == "sampling" or public is not None:
        loader, sampled = poisson_loader(
            cfg, rows, weights, counts, private_records=len(data), balanced=weighting == "sampling",
            seed=seed, population=population,
        )  # fmt: skip
        return LocalTraining(weighting, loader, optimizer, w_max, sampled)
    loader = make_loader(data, weights, cfg.train.batch_size, seed=seed)
    return LocalTraining(weighting, loader, optimizer, w_max)


def poisson_loader(
    cfg: RunConfig, rows: Encoded, weights: torch.Tensor, counts: np.ndarray, *,
    private_records: int, balanced: bool, seed: int, population: np.ndarray | None = None,
) -> tuple[DataLoader, tuple[float, float]]:  # fmt: skip
    """Poisson batches where every row has its own rate: by group (``balanced``, from
    ``counts``, released ones under DP) or the plain rate q.

    The largest rate is the plain Poisson rate ``q = 1/ceil(n/B)`` of the privacy plan for
    the ``private_records`` records, so the plan, σ and the accountant are those of
    unweighted DP-SGD; with ``balanced`` scarcer groups keep rate q and commoner ones are
    drawn less (:mod:`clients.group_sampling`), though no less than keeps the expected batch
    at ``fair.min-batch-share`` of the plain one. Rows after the private records (public
    ones) are drawn at their group's rate too.
    """
    q_max = poisson_rate(private_records, cfg.train.batch_size)
    num_groups = len(counts)
    rates = np.full(num_groups, q_max)
    if balanced:
        per_group, _ = weights_from_released(
            counts, torch.arange(num_groups), alpha=cfg.fair.local_alpha,
            max_weight=cfg.fair.local_max_weight, population=population,
        )  # fmt: skip
        rates = group_rates(per_group.double().numpy(), counts, max_rate=q_max)
        rates = with_batch_floor(rates, counts, max_rate=q_max, records=private_records,
                                 min_batch_share=cfg.fair.min_batch_share)  # fmt: skip
    public_counts = np.bincount(rows.groups[private_records:].numpy(), minlength=num_groups)
    batch = expected_batch(counts, rates, records=private_records) + float(public_counts @ rates)
    dataset = record_tensors(rows, weights)
    sampler = GroupPoissonSampler(
        torch.from_numpy(rates)[rows.groups], steps=poisson_steps_per_epoch(q_max),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    first = dataset[0]
    collate = wrap_collate_with_empty(
        collate_fn=default_collate, sample_empty_shapes=[(0, *x.shape) for x in first],
        dtypes=[x.dtype for x in first],
    )  # fmt: skip
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    return loader, (q_max, batch)
