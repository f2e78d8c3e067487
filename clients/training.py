"""Local training and evaluation: plain torch, no Flower."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from task.data import Encoded


@dataclass(frozen=True)
class TrainResult:
    loss: float
    accuracy: float
    steps: int
    seconds: float
    num_examples: int


def _forward_arguments(model: nn.Module) -> set[str]:
    """Arguments of the innermost model's ``forward`` (under Opacus' and peft's wrappers)."""
    inner: Any = model
    while hasattr(inner, "_module"):  # opacus GradSampleModule
        inner = inner._module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return set(inspect.signature(inner.forward).parameters)


def model_inputs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Inputs with per-sample ``position_ids``/``token_type_ids`` of shape (batch, seq_len).

    Hugging Face models otherwise broadcast a (1, seq_len) buffer, which Opacus' per-sample
    gradient hooks read as a batch of one.
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    accepted = _forward_arguments(model)
    batch, length = input_ids.shape
    if "position_ids" in accepted:
        inputs["position_ids"] = torch.arange(length).expand(batch, length)
    if "token_type_ids" in accepted:
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return inputs


def make_loader(
    data: Encoded, weights: torch.Tensor, batch_size: int, *, seed: int, shuffle: bool = True
) -> DataLoader:
    dataset = TensorDataset(data.input_ids, data.attention_mask, data.labels, weights)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def per_example_loss(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Cross-entropy per example and the number of correct predictions."""
    input_ids, attention_mask, labels = batch[0], batch[1], batch[2]
    logits = model(**model_inputs(model, input_ids, attention_mask)).logits
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
                optimizer.step_on_empty_batch()  # type: ignore[attr-defined]
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


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """Predicted class ids and mean cross-entropy loss over ``data``."""
    model.eval()
    predictions, total_loss = [], 0.0
    for start in range(0, len(data), batch_size):
        ids = data.input_ids[start : start + batch_size]
        mask = data.attention_mask[start : start + batch_size]
        logits = model(**model_inputs(model, ids, mask)).logits
        labels = data.labels[start : start + batch_size]
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        predictions.append(logits.argmax(-1))
    return torch.cat(predictions), total_loss / max(len(data), 1)
