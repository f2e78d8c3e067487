"""Local training and evaluation: plain torch, no Flower."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass

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
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


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


def _batches(loader: DataLoader, epochs: int) -> Iterator[list[torch.Tensor]]:
    for _ in range(epochs):
        for batch in loader:
            if batch[0].shape[0] > 0:  # Poisson sampling can draw an empty batch
                yield batch


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    epochs: int,
    pre_clip_weights: bool = False,
) -> TrainResult:
    """Run ``epochs`` over ``loader``; the 4th tensor of a batch is its per-example weight.

    With ``pre_clip_weights`` the loss is weighted per example; a weighted DP optimizer
    (``set_sample_weights``) instead weights the clipped per-sample gradients.
    """
    model.train()
    start = time.perf_counter()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for batch in _batches(loader, epochs):
        optimizer.zero_grad()
        losses, batch_correct = per_example_loss(model, batch)
        weights = batch[3]
        if hasattr(optimizer, "set_sample_weights"):
            optimizer.set_sample_weights(weights)
        loss = (losses * weights).mean() if pre_clip_weights else losses.mean()
        loss.backward()
        optimizer.step()
        total_loss += float(losses.detach().sum())
        correct += batch_correct
        seen += int(losses.shape[0])
        steps += 1
    seconds = time.perf_counter() - start
    return TrainResult(
        loss=total_loss / max(seen, 1),
        accuracy=correct / max(seen, 1),
        steps=steps,
        seconds=seconds,
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
